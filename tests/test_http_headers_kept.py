"""What of a response's headers an http node's output keeps (issue 31, minor 14): a few
that flows read, not every header (cookies, tracing ids) into results and events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from node_handlers.http import DEFAULT_RESPONSE_HEADERS, HttpConfig, HttpHandler
from tests.conftest_llm import allow_hosts, handler_env, make_context  # noqa: F401 (fixture)
from tests.openai_server import serve_in_thread

SENT = {
    "Set-Cookie": "session=s3cret; HttpOnly",
    "X-Request-Id": "req-42",
    "ETag": '"v7"',
    "Link": '<https://api.example/next>; rel="next"',
    "Server-Timing": "db;dur=53",
}


async def answer(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True}, headers=SENT)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve_in_thread(Starlette(routes=[Route("/", answer)])) as server:
        yield server.url


@pytest.fixture
def loopback(handler_env: pytest.MonkeyPatch) -> None:
    allow_hosts(handler_env, "127.0.0.1")


async def headers_of(data: dict[str, Any]) -> dict[str, str]:
    completed = await HttpHandler().run(HttpConfig.model_validate(data), make_context())
    return completed.output["headers"]


@pytest.mark.usefixtures("loopback")
async def test_by_default_the_output_keeps_the_headers_flows_read(base: str) -> None:
    kept = await headers_of({"url": base})
    assert set(kept) == {"content-type", "content-length", "etag", "link"}, kept
    assert set(kept) <= set(DEFAULT_RESPONSE_HEADERS)
    assert kept["etag"] == '"v7"' and "set-cookie" not in kept and "x-request-id" not in kept


@pytest.mark.usefixtures("loopback")
async def test_a_node_names_the_headers_it_keeps_or_all_of_them(base: str) -> None:
    assert await headers_of({"url": base, "response_headers": ["X-Request-Id"]}) == {"x-request-id": "req-42"}
    everything = await headers_of({"url": base, "response_headers": ["*"]})
    assert {name.lower() for name in SENT} <= set(everything)
    assert await headers_of({"url": base, "response_headers": []}) == {}
