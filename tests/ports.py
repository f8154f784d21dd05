"""Ports for the tests' servers (no imports beyond the standard library: tests/conftest.py
uses it before Prefect's settings are set)."""

from __future__ import annotations

import random
import socket

LISTEN_PORTS = range(20000, 32000)
"""Where the tests' servers listen: below Linux's ephemeral range (32768 and up), so a port
chosen now is not taken meanwhile as the source port of some outgoing connection (a port the
kernel hands out for ``bind(0)`` is one of those), and above this machine's services."""


def free_port() -> int:
    """A port nothing listens on now, for a server started soon."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")
