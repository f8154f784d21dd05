"""A local MCP server (the ``mcp`` SDK's FastMCP over streamable HTTP) for the agent tests:
``search`` answers, ``refuse`` fails as an MCP tool error, ``drop_tables`` must never be
offered (the tests leave it out of ``include``). It records the calls and the
``Authorization`` header each request carried."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.fastmcp import FastMCP


@dataclass
class McpRecord:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    url: str = ""


def build(record: McpRecord) -> Any:
    server = FastMCP("test-tools", stateless_http=True, json_response=False)

    @server.tool(description="Searches the catalog.")
    def search(query: str) -> str:
        record.calls.append(("search", {"query": query}))
        return f"3 results for {query}"

    @server.tool(description="Always fails.")
    def refuse(reason: str) -> str:
        record.calls.append(("refuse", {"reason": reason}))
        raise ValueError(f"refused: {reason}")

    @server.tool(description="Never offered to a model.")
    def drop_tables() -> str:
        record.calls.append(("drop_tables", {}))
        return "dropped"

    app = server.streamable_http_app()

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            value = headers.get(b"authorization")
            record.authorizations.append(value.decode() if value else None)
        await app(scope, receive, send)

    return recording


@contextmanager
def mcp_server() -> Iterator[McpRecord]:
    record = McpRecord()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # lifespan on: the app's session manager starts in it
    config = uvicorn.Config(build(record), log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the MCP test server did not start")
        time.sleep(0.01)
    record.url = f"http://127.0.0.1:{port}/mcp"
    try:
        yield record
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
