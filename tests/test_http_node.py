"""The http node against a real HTTP server on a local socket, and the egress policy."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from node_handlers import egress
from node_handlers.base import NodeError
from node_handlers.egress import EgressPolicy, refusal_reason
from node_handlers.http import HttpConfig, HttpHandler, parse_retry_after
from tests.conftest_llm import allow_hosts, handler_env, make_context, run_with_retries, set_env  # noqa: F401
from tests.openai_server import ServerThread, serve_in_thread

TOKEN = "tok-very-secret-4711"
PASSWORD = "pa55-word-very-secret"


class RecordingApp:
    """A small site with one route per behaviour; it records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/json", self.json),
                Route("/text", self.text),
                Route("/redirect", self.redirect, methods=["GET", "POST"]),
                Route("/loop", self.loop),
                Route("/echo", self.echo, methods=["GET", "POST", "PUT", "DELETE"]),
                Route("/status/{code:int}", self.status),
                Route("/flaky/{key}", self.flaky),
                Route("/ratelimit/{key}", self.ratelimit),
                Route("/slow", self.slow),
                Route("/big", self.big),
                Route("/stream", self.stream),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            with self._lock:
                self.requests.append(
                    {"path": scope["path"], "method": scope["method"], "headers": headers, "at": time.monotonic()}
                )
        await self.app(scope, receive, send)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def count(self, key: str) -> int:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]

    async def json(self, request: Request) -> Response:
        return JSONResponse({"hello": "world", "n": 1})

    async def text(self, request: Request) -> Response:
        return PlainTextResponse("plain text here")

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=int(request.query_params.get("code", 302)))

    async def loop(self, request: Request) -> Response:
        return RedirectResponse("/loop", status_code=302)

    async def echo(self, request: Request) -> Response:
        body = (await request.body()).decode()
        return JSONResponse(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "body": body,
                "query": dict(request.query_params),
            }
        )

    async def status(self, request: Request) -> Response:
        code = request.path_params["code"]
        authorization = request.headers.get("authorization", "")
        return PlainTextResponse(f"status {code}; you sent authorization={authorization}", status_code=code)

    async def flaky(self, request: Request) -> Response:
        served = self.count(request.path_params["key"])
        if served <= int(request.query_params.get("fail", 1)):
            return PlainTextResponse("upstream broke", status_code=int(request.query_params.get("code", 503)))
        return JSONResponse({"served": served})

    async def ratelimit(self, request: Request) -> Response:
        if self.count(request.path_params["key"]) == 1:
            return PlainTextResponse(
                "slow down", status_code=429, headers={"Retry-After": request.query_params.get("after", "1")}
            )
        return JSONResponse({"ok": True})

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("delay", 5)))
        return PlainTextResponse("late")

    async def big(self, request: Request) -> Response:
        return PlainTextResponse("x" * int(request.query_params["size"]))

    async def stream(self, request: Request) -> Response:
        size = int(request.query_params["size"])

        async def pieces() -> Any:
            for _ in range(size // 1000):
                yield b"y" * 1000

        return StreamingResponse(pieces(), media_type="text/plain")  # chunked: no Content-Length


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[RecordingApp, ServerThread]]:
    app = RecordingApp()
    with serve_in_thread(app) as server:
        yield app, server


@pytest.fixture
def web(site: tuple[RecordingApp, ServerThread]) -> RecordingApp:
    site[0].requests.clear()
    return site[0]


@pytest.fixture
def base(site: tuple[RecordingApp, ServerThread]) -> str:
    return site[1].url


@pytest.fixture
def port(site: tuple[RecordingApp, ServerThread]) -> int:
    return site[1].port


@pytest.fixture
def loopback_allowed(handler_env: pytest.MonkeyPatch) -> None:
    allow_hosts(handler_env, "127.0.0.1")


async def call(data: dict[str, Any]) -> dict[str, Any]:
    handler = HttpHandler()
    completed = await handler.run(HttpConfig.model_validate(data), make_context())
    return completed.output


async def call_error(data: dict[str, Any]) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await call(data)
    return caught.value


# Status classes


@pytest.mark.usefixtures("loopback_allowed")
async def test_2xx_json_body_is_parsed(web: RecordingApp, base: str) -> None:
    output = await call({"url": f"{base}/json"})
    assert output["status"] == 200
    assert output["body"] == {"hello": "world", "n": 1}
    assert output["headers"]["content-type"] == "application/json"


@pytest.mark.usefixtures("loopback_allowed")
async def test_2xx_text_body_stays_text(web: RecordingApp, base: str) -> None:
    output = await call({"url": f"{base}/text"})
    assert output["body"] == "plain text here"


@pytest.mark.usefixtures("loopback_allowed")
async def test_post_sends_json_query_and_headers(web: RecordingApp, base: str) -> None:
    output = await call(
        {
            "method": "post",
            "url": f"{base}/echo",
            "json": {"a": [1, 2]},
            "query": {"q": "x y", "n": 3},
            "headers": {"X-Trace": "t-1", "X-Num": 5},
        }
    )
    echoed = output["body"]
    assert echoed["method"] == "POST"
    assert json.loads(echoed["body"]) == {"a": [1, 2]}
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["query"] == {"q": "x y", "n": "3"}
    assert echoed["headers"]["x-trace"] == "t-1" and echoed["headers"]["x-num"] == "5"


@pytest.mark.usefixtures("loopback_allowed")
async def test_idempotency_key_by_default_overridden_or_off(web: RecordingApp, base: str) -> None:
    handler = HttpHandler()
    context = dataclasses.replace(make_context(), idempotency_key="run-7:charge:2.0")
    for data in (
        {},
        {"idempotency_key": "order-{{ 1 }}"},
        {"idempotency_key": False},
        {"headers": {"idempotency-key": "mine"}},
    ):
        await handler.run(HttpConfig.model_validate({"method": "POST", "url": f"{base}/echo", **data}), context)
    sent = [r["headers"].get("idempotency-key") for r in web.requests]
    assert sent == ["run-7:charge:2.0", "order-{{ 1 }}", None, "mine"]


@pytest.mark.usefixtures("loopback_allowed")
async def test_form_and_text_bodies(web: RecordingApp, base: str) -> None:
    form = await call({"method": "PUT", "url": f"{base}/echo", "form": {"name": "Ada", "n": "1"}})
    assert form["body"]["body"] == "name=Ada&n=1"
    assert form["body"]["headers"]["content-type"] == "application/x-www-form-urlencoded"
    text = await call(
        {"method": "POST", "url": f"{base}/echo", "body": "raw text", "headers": {"Content-Type": "text/plain"}}
    )
    assert text["body"]["body"] == "raw text"


def test_only_one_body_kind_is_accepted() -> None:
    with pytest.raises(ValidationError, match="at most one of json, body and form"):
        HttpConfig.model_validate({"url": "http://x", "json": {}, "form": {"a": "b"}})


def test_expected_status_accepts_codes_and_classes_only() -> None:
    assert HttpConfig.model_validate({"url": "http://x", "expected_status": "4xx"}).expected_status == ["4xx"]
    mixed = HttpConfig.model_validate({"url": "http://x", "expected_status": [200, "3xx"]})
    assert mixed.expected_status == [200, "3xx"]
    with pytest.raises(ValidationError):
        HttpConfig.model_validate({"url": "http://x", "expected_status": ["2xxx"]})
    with pytest.raises(ValidationError):
        HttpConfig.model_validate({"url": "http://x", "expected_status": [999]})


def test_templates_are_accepted_before_they_are_resolved() -> None:
    config = HttpConfig.model_validate(
        {
            "url": "{{ inputs.url }}",
            "timeout_s": "{{ inputs.t }}",
            "expected_status": "{{ inputs.ok }}",
            "headers": "{{ inputs.h }}",
        }
    )
    assert config.timeout_s == "{{ inputs.t }}"


@pytest.mark.usefixtures("loopback_allowed")
async def test_3xx_redirect_is_followed(web: RecordingApp, base: str) -> None:
    output = await call({"url": f"{base}/redirect?to=/json"})
    assert output["status"] == 200
    assert output["body"] == {"hello": "world", "n": 1}
    assert output["url"] == f"{base}/json"
    assert web.paths() == ["/redirect", "/json"]


@pytest.mark.usefixtures("loopback_allowed")
async def test_303_after_post_becomes_get_without_body(web: RecordingApp, base: str) -> None:
    output = await call({"method": "POST", "url": f"{base}/redirect?to=/echo&code=303", "json": {"a": 1}})
    assert output["body"]["method"] == "GET"
    assert output["body"]["body"] == ""


@pytest.mark.usefixtures("loopback_allowed")
async def test_307_keeps_method_and_body(web: RecordingApp, base: str) -> None:
    output = await call({"method": "POST", "url": f"{base}/redirect?to=/echo&code=307", "json": {"a": 1}})
    assert output["body"]["method"] == "POST"
    assert json.loads(output["body"]["body"]) == {"a": 1}


@pytest.mark.usefixtures("loopback_allowed")
async def test_redirect_loop_stops_after_five_hops(web: RecordingApp, base: str) -> None:
    error = await call_error({"url": f"{base}/loop"})
    assert error.error_type == "TooManyRedirects"
    assert error.retry_class is None
    assert len(web.paths()) == 6  # the request and five redirects


@pytest.mark.usefixtures("loopback_allowed")
async def test_redirect_not_followed_when_disabled(web: RecordingApp, base: str) -> None:
    output = await call({"url": f"{base}/redirect?to=/json", "follow_redirects": False, "expected_status": ["3xx"]})
    assert output["status"] == 302
    assert output["headers"]["location"] == "/json"
    error = await call_error({"url": f"{base}/redirect?to=/json", "follow_redirects": False})
    assert error.retry_class is None and "302" in error.message


@pytest.mark.usefixtures("loopback_allowed")
async def test_4xx_fails_without_retry(web: RecordingApp, base: str) -> None:
    run = await run_with_retries(HttpHandler(), {"url": f"{base}/status/404"})
    error = run.result.error
    assert isinstance(error, NodeError)
    assert error.retry_class is None
    assert run.result.attempts == 1 and web.paths() == ["/status/404"]
    assert "404" in error.message and "status 404;" in error.message  # status and a body excerpt
    assert error.details["status"] == 404


@pytest.mark.usefixtures("loopback_allowed")
async def test_expected_status_turns_a_4xx_into_success(web: RecordingApp, base: str) -> None:
    output = await call({"url": f"{base}/status/404", "expected_status": [404]})
    assert output["status"] == 404


@pytest.mark.usefixtures("loopback_allowed")
async def test_5xx_is_retried_then_succeeds(web: RecordingApp, base: str) -> None:
    run = await run_with_retries(HttpHandler(), {"url": f"{base}/flaky/five-hundred?fail=2"})
    assert run.result.completed is not None
    assert run.result.completed.output["body"] == {"served": 3}
    assert run.result.attempts == 3
    assert [getattr(exc, "retry_class", None) for _, exc, _ in run.retries] == ["5xx", "5xx"]


@pytest.mark.usefixtures("loopback_allowed")
async def test_5xx_fails_after_the_last_attempt(web: RecordingApp, base: str) -> None:
    run = await run_with_retries(HttpHandler(), {"url": f"{base}/flaky/always?fail=99&code=502"})
    assert run.result.attempts == 3
    assert isinstance(run.result.error, NodeError) and run.result.error.retry_class == "5xx"


@pytest.mark.usefixtures("loopback_allowed")
async def test_429_waits_at_least_retry_after(web: RecordingApp, base: str) -> None:
    run = await run_with_retries(HttpHandler(), {"url": f"{base}/ratelimit/one-second?after=1"})
    assert run.result.completed is not None and run.result.attempts == 2
    failed_attempt, error, delay = run.retries[0]
    assert isinstance(error, NodeError) and error.retry_class == "429" and error.retry_after_s == 1.0
    assert delay >= 1.0  # the backoff alone would be 0.01 s
    first, second = [r["at"] for r in web.requests]
    assert second - first >= 0.9


def test_retry_after_as_seconds_or_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.usefixtures("loopback_allowed")
async def test_by_default_a_timeout_or_a_refused_connection_is_tried_three_times(web: RecordingApp, base: str) -> None:
    """The default policy's classes and attempts, as a run sees them (5xx, 4xx and 429: the
    tests above)."""
    from tests.processes import free_port

    for data, retry_class in (
        ({"url": f"{base}/slow?delay=1", "timeout_s": 0.3}, "timeout"),
        ({"url": f"http://127.0.0.1:{free_port()}/"}, "connection"),
    ):
        run = await run_with_retries(HttpHandler(), data)
        assert isinstance(run.result.error, NodeError) and run.result.attempts == 3, (retry_class, run.result)
        assert [getattr(exc, "retry_class", None) for _, exc, _ in run.retries] == [retry_class] * 2


# Timeouts, connection errors, size


@pytest.mark.usefixtures("loopback_allowed")
async def test_timeout_is_a_timeout_error(web: RecordingApp, base: str) -> None:
    started = time.monotonic()
    error = await call_error({"url": f"{base}/slow?delay=5", "timeout_s": 0.5})
    assert error.retry_class == "timeout"
    assert time.monotonic() - started < 4


@pytest.mark.usefixtures("loopback_allowed")
async def test_refused_connection_is_a_connection_error() -> None:
    closed = ServerThread(Starlette())  # a bound port nobody listens on
    closed_port = closed.port
    closed._socket.close()
    error = await call_error({"url": f"http://127.0.0.1:{closed_port}/"})
    assert error.retry_class == "connection"


@pytest.mark.usefixtures("loopback_allowed")
@pytest.mark.parametrize("path", ["/big?size=5000", "/stream?size=5000"])  # with and without Content-Length
async def test_response_larger_than_the_limit_fails(web: RecordingApp, base: str, path: str) -> None:
    error = await call_error({"url": f"{base}{path}", "max_response_bytes": 1000})
    assert error.error_type == "ResponseTooLarge" and error.retry_class is None
    assert "max_response_bytes" in error.message
    output = await call({"url": f"{base}{path}", "max_response_bytes": 5000})
    assert len(output["body"]) == 5000


# Egress policy


async def test_loopback_is_refused_by_default(web: RecordingApp, base: str) -> None:
    error = await call_error({"url": f"{base}/json"})
    assert error.error_type == "EgressDenied" and error.retry_class is None
    assert "127.0.0.1" in error.message and "FLOWMAESTRO_HTTP_ALLOW_HOSTS" in error.message
    assert web.paths() == []


async def test_redirect_to_loopback_is_refused_when_only_the_first_host_is_allowed(
    web: RecordingApp, port: int, handler_env: pytest.MonkeyPatch
) -> None:
    allow_hosts(handler_env, "localhost")
    error = await call_error({"url": f"http://localhost:{port}/redirect?to=http://127.0.0.1:{port}/json"})
    assert error.error_type == "EgressDenied"
    assert "127.0.0.1" in error.message
    assert web.paths() == ["/redirect"]  # the target was never reached


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Replace name resolution of the egress policy with a table."""
    table: dict[str, list[str]] = {}
    real = egress.resolve_host

    async def resolve(host: str, port: int) -> list[Any]:
        if host in table:
            return [ipaddress.ip_address(a) for a in table[host]]
        return await real(host, port)

    monkeypatch.setattr(egress, "resolve_host", resolve)
    return table


async def test_a_name_resolving_to_a_private_address_is_refused(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["intranet.example"] = ["10.1.2.3"]
    error = await call_error({"url": "http://intranet.example/admin"})
    assert error.error_type == "EgressDenied"
    assert "intranet.example" in error.message and "10.1.2.3" in error.message


async def test_every_resolved_address_must_be_allowed(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["mixed.example"] = ["93.184.216.34", "10.0.0.1"]
    error = await call_error({"url": "http://mixed.example/"})
    assert error.error_type == "EgressDenied" and "10.0.0.1" in error.message


@pytest.mark.usefixtures("loopback_allowed")
async def test_the_connection_goes_to_the_checked_address(
    web: RecordingApp, port: int, fake_dns: dict[str, list[str]]
) -> None:
    # pinned.example exists only in the policy's resolver: reaching the server proves the
    # connection used the checked address, while Host still names the host.
    fake_dns["pinned.example"] = ["127.0.0.1"]
    output = await call({"url": f"http://pinned.example:{port}/echo"})
    assert output["body"]["headers"]["host"] == f"pinned.example:{port}"


async def test_an_allowlisted_name_may_resolve_to_a_private_address(
    fake_dns: dict[str, list[str]], handler_env: pytest.MonkeyPatch, web: RecordingApp, port: int
) -> None:
    fake_dns["internal.example"] = ["127.0.0.1"]
    allow_hosts(handler_env, "internal.example")
    output = await call({"url": f"http://internal.example:{port}/json"})
    assert output["status"] == 200


async def test_star_allows_everything(web: RecordingApp, base: str, handler_env: pytest.MonkeyPatch) -> None:
    allow_hosts(handler_env, "*")
    assert (await call({"url": f"{base}/json"}))["status"] == 200
    assert EgressPolicy.parse("*").allows_address(ipaddress.ip_address("169.254.169.254"))


async def test_a_cidr_allows_its_network(web: RecordingApp, base: str, handler_env: pytest.MonkeyPatch) -> None:
    allow_hosts(handler_env, "10.0.0.0/8, 127.0.0.0/8")
    assert (await call({"url": f"{base}/json"}))["status"] == 200


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("255.255.255.255", "broadcast"),
    ],
)
def test_refused_address_kinds(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found
    assert not EgressPolicy.parse("").allows_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_allowlist_entries() -> None:
    policy = EgressPolicy.parse(" Intranet.Example. , 10.1.0.0/16,192.168.1.5,[fd00::1] ")
    assert policy.allows_host("intranet.example") and not policy.allows_host("other.example")
    assert policy.allows_address(ipaddress.ip_address("10.1.200.1"))
    assert not policy.allows_address(ipaddress.ip_address("10.2.0.1"))
    assert policy.allows_address(ipaddress.ip_address("192.168.1.5"))
    assert policy.allows_address(ipaddress.ip_address("fd00::1"))
    assert not policy.allow_all


# Secrets


@pytest.mark.usefixtures("loopback_allowed")
async def test_bearer_secret_reaches_the_server_but_not_the_output(
    web: RecordingApp, base: str, handler_env: pytest.MonkeyPatch
) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_SECRET_API_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_API_TOKEN_OWNERS="*",
        FLOWMAESTRO_SECRET_API_TOKEN_HOSTS="127.0.0.1",
    )
    output = await call({"url": f"{base}/echo", "auth": {"type": "bearer", "token_secret": "API_TOKEN"}})
    assert web.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in json.dumps(output)
    assert output["body"]["headers"]["authorization"] == "[redacted]"


@pytest.mark.usefixtures("loopback_allowed")
async def test_basic_secret_is_absent_from_the_error(
    web: RecordingApp, base: str, handler_env: pytest.MonkeyPatch
) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_SECRET_SVC_PASSWORD=PASSWORD,
        FLOWMAESTRO_SECRET_SVC_PASSWORD_OWNERS="*",
        FLOWMAESTRO_SECRET_SVC_PASSWORD_HOSTS="127.0.0.1",
    )
    error = await call_error(
        {"url": f"{base}/status/401", "auth": {"type": "basic", "username": "svc", "password_secret": "svc_password"}}
    )
    sent = web.requests[0]["headers"]["authorization"]
    assert sent == "Basic " + base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    assert "401" in error.message
    for leaked in (PASSWORD, sent, sent.split()[1]):
        assert leaked not in error.message and leaked not in json.dumps(error.details)


async def test_credentials_are_not_forwarded_to_another_origin(
    web: RecordingApp, port: int, handler_env: pytest.MonkeyPatch
) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_SECRET_SVC_KEY=TOKEN,
        FLOWMAESTRO_SECRET_SVC_KEY_OWNERS="*",
        FLOWMAESTRO_SECRET_SVC_KEY_HOSTS="127.0.0.1,localhost",
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost",
    )
    output = await call(
        {
            "url": f"http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/echo",
            "auth": {"type": "header", "header": "X-Api-Key", "value_secret": "SVC_KEY"},
        }
    )
    assert web.requests[0]["headers"]["x-api-key"] == TOKEN
    assert "x-api-key" not in web.requests[1]["headers"]
    assert "x-api-key" not in output["body"]["headers"]


async def test_a_missing_secret_names_its_variable(handler_env: pytest.MonkeyPatch) -> None:
    set_env(handler_env, FLOWMAESTRO_SECRET_NOPE_OWNERS="*")
    error = await call_error({"url": "http://example.invalid/", "auth": {"type": "bearer", "token_secret": "NOPE"}})
    assert error.error_type == "MissingSecret"
    assert "FLOWMAESTRO_SECRET_NOPE" in error.message


def test_a_secret_name_cannot_be_a_template() -> None:
    with pytest.raises(ValidationError):
        HttpConfig.model_validate({"url": "http://x", "auth": {"type": "bearer", "token_secret": "{{ env.T }}"}})
