"""Fixtures and helpers of the http/llm/router handler tests (imported by their modules).

- ``handler_env`` (autouse where imported): a clean handler environment per test, with
  no allowlist and no API key unless the test sets them.
- ``openai_server``: the fake OpenAI server of ``tests/openai_server.py``, started once per
  module and reset before each test.
- ``make_context`` / ``run_with_retries``: call a handler once, or with a retry policy
  through the engine's own ``DirectRunner``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from builder.plan import CachePolicy, PlanNode, RetryPolicy
from flows.calls import CallResult, DirectRunner, NodeCall
from node_handlers.base import NodeContext, NodeHandler
from tests.openai_server import FakeOpenAI

HANDLER_ENV = (
    "FLOWMAESTRO_HTTP_ALLOW_HOSTS",
    "FLOWMAESTRO_OPENAI_BASE_URL",
    "FLOWMAESTRO_OPENAI_API_KEY",
    "OPENAI_API_KEY",
    "FLOWMAESTRO_LLM_PRICES",
    "FLOWMAESTRO_DEFAULT_MODEL",
    "OPENAI_BASE_URL",
    "FLOWMAESTRO_ANTHROPIC_BASE_URL",
    "FLOWMAESTRO_ANTHROPIC_API_KEY",
    "ANTHROPIC_API_KEY",
)


@pytest.fixture(autouse=True)
def handler_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in HANDLER_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Set environment variables: handler settings built from now on read them."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def allow_hosts(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    set_env(monkeypatch, FLOWMAESTRO_HTTP_ALLOW_HOSTS=value)


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().running() as server:
        yield server


@pytest.fixture
def openai_server(fake_openai: FakeOpenAI) -> FakeOpenAI:
    fake_openai.reset()
    return fake_openai


@dataclass
class Emitted:
    """The events a handler published through ``ctx.emit``, in order."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == event_type]


def make_context(emitted: Emitted | None = None, attempt: int = 1, node_id: str = "node") -> NodeContext:
    sink = emitted if emitted is not None else Emitted()
    return NodeContext(
        node_id=node_id,
        path=(),
        run_id="run-test",
        workflow="test",
        attempt=attempt,
        upstream={},
        inputs={},
        emit=lambda kind, data: sink.events.append((kind, dict(data))),
    )


def plan_node(node_type: str, retry: RetryPolicy, timeout_s: float | None = None) -> PlanNode:
    return PlanNode(
        id="node",
        type=node_type,
        label="node",
        scope="",
        data={},
        retry=retry,
        timeout_s=timeout_s,
        cache=CachePolicy(),
        join="all",
        handles=frozenset(),
        incoming=(),
        outgoing=(),
        references=frozenset(),
        level=0,
    )


@dataclass
class RetriedRun:
    result: CallResult
    retries: list[tuple[int, BaseException, float]]
    """(attempt that failed, its error, delay before the next) for each retry."""
    emitted: Emitted


def fast(policy: RetryPolicy, **changes: Any) -> RetryPolicy:
    """``policy`` with short delays and no jitter, so tests do not wait for backoff."""
    return dataclasses.replace(policy, **{"initial_delay_s": 0.01, "jitter": 0.0, **changes})


async def run_with_retries(
    handler: NodeHandler, data: dict[str, Any], retry: RetryPolicy | None = None, timeout_s: float | None = None
) -> RetriedRun:
    """Run ``handler`` the way the engine does: validated config, retry policy, DirectRunner."""
    emitted = Emitted()
    retries: list[tuple[int, BaseException, float]] = []
    call = NodeCall(
        node=plan_node(handler.type, retry or fast(handler.default_retry), timeout_s),
        path=(),
        handler=handler,
        config=handler.Config.model_validate(data),
        make_context=lambda attempt: make_context(emitted, attempt),
        cache_key=None,
        on_retry=lambda attempt, exc, delay: retries.append((attempt, exc, delay)),
        task_run_name="node",
    )
    result = await DirectRunner().run(call)
    return RetriedRun(result, retries, emitted)
