"""The API's listening socket, bound before ``serve`` says anything: a port in use is an
error at once, not an address printed and then a failure in uvicorn's log."""

from __future__ import annotations

import errno
import socket


class PortTaken(Exception):
    """The address cannot be listened on; the message says which and why."""


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, as uvicorn would open it (SO_REUSEADDR, so a
    restart does not wait for the old connections' TIME_WAIT)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise PortTaken(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(
                f"port {port} on {host} is already in use: stop what listens there or pass --port"
            ) from None
        raise PortTaken(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.set_inheritable(False)
    return listener
