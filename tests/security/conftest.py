"""Fixtures of the security tests."""

from __future__ import annotations

import time

import pytest

from deployments import recovery


@pytest.fixture
def sent(monkeypatch):
    """The heartbeat events emitted, with the time each was sent."""
    events: list[tuple[float, str, str]] = []
    monkeypatch.setattr(
        recovery,
        "emit_event",
        lambda event, resource, related=None: events.append((time.monotonic(), event, resource["prefect.resource.id"])),
    )
    return events
