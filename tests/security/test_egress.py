"""Issue 30, findings 1a and 14: what http and llm nodes may connect to.

1a. "The egress allowlist has no port: allowing 127.0.0.1 for a model lets every canvas reach
Prefect's unauthenticated API on loopback." FlowMaestro's own services (the Prefect API, the
API, the database, Redis) are now refused whatever FLOWMAESTRO_HTTP_ALLOW_HOSTS says, and its
entries take a port.

14. "The egress policy allows the host's own non-private addresses, NAT64, 6to4 and
IPv4-compatible IPv6 forms of loopback." Only globally routable addresses pass by default,
the IPv4 address inside an IPv6 form is checked too, and the machine's own addresses need an
entry with a port.

The attacks run through the real http (and llm) handler against real local servers, and once
as a real flow run on `flowmaestro serve`; the address classification is also tested alone.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from node_handlers import egress
from node_handlers.addresses import interface_addresses, refusal_reason
from node_handlers.base import NodeError
from node_handlers.egress import AllowRule, EgressPolicy
from node_handlers.http import HttpConfig, HttpHandler
from node_handlers.llm import LlmConfig, LlmHandler
from node_handlers.protected import ServiceAddress, protect, service_addresses
from node_handlers.settings import HandlerSettings
from tests.conftest_llm import allow_hosts, fake_openai, handler_env, make_context, openai_server, set_env  # noqa: F401
from tests.openai_server import FakeOpenAI, serve_in_thread
from tests.processes import free_port, wait_until

PG_PORT = 5432
REDIS_PORT = 6379


def prefect_port() -> int:
    port = urlsplit(os.environ["PREFECT_API_URL"]).port  # the session's server (tests/conftest.py)
    assert port is not None
    return port


async def call(data: dict[str, Any]) -> dict[str, Any]:
    completed = await HttpHandler().run(HttpConfig.model_validate(data), make_context())
    return completed.output


async def refused(url: str, method: str = "GET", **data: Any) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await call({"url": url, "method": method, **data})
    return caught.value


@pytest.fixture
def installation(handler_env: pytest.MonkeyPatch) -> dict[str, int]:
    """A worker's settings as `flowmaestro serve` gives them: the Prefect API of the test
    session, the API on a port of its own, the store on the real PostgreSQL, Redis; and
    loopback allowed for a local model, as the pentest found it."""
    api_port = free_port()
    set_env(
        handler_env,
        FLOWMAESTRO_API_BIND=f"127.0.0.1:{api_port}",
        FLOWMAESTRO_PUBLIC_URL=f"http://127.0.0.1:{api_port}",
        FLOWMAESTRO_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{PG_PORT}/flowmaestro",
        FLOWMAESTRO_REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}/0",
        FLOWMAESTRO_CACHE_LOCK_REDIS_URL=f"redis://localhost:{REDIS_PORT}/1",
    )
    allow_hosts(handler_env, "127.0.0.1")
    return {
        "the Prefect API": prefect_port(),
        "the FlowMaestro API": api_port,
        "the FlowMaestro database": PG_PORT,
        "Redis": REDIS_PORT,
    }


# Finding 1a: FlowMaestro's own services, whatever the allowlist says


async def test_allowing_loopback_does_not_open_the_prefect_api(installation: dict[str, int]) -> None:
    port = installation["the Prefect API"]
    health = await refused(f"http://127.0.0.1:{port}/api/health")
    set_state = await refused(
        f"http://127.0.0.1:{port}/api/flow_runs/{uuid.uuid4()}/set_state",
        "POST",
        json={
            "state": {"type": "COMPLETED", "data": {"storage_key": "/tmp/evil.pickle", "serializer": "pickle"}},
            "force": True,
        },
    )
    for error in (health, set_state):
        assert error.error_type == "EgressDenied" and error.retry_class is None
        assert "the Prefect API" in error.message and f"127.0.0.1:{port}" in error.message
        assert error.details["service"] == "the Prefect API"


@pytest.mark.parametrize("service", ["the FlowMaestro API", "the FlowMaestro database", "Redis"])
async def test_allowing_loopback_does_not_open_the_other_services(installation: dict[str, int], service: str) -> None:
    port = installation[service]
    error = await refused(f"http://127.0.0.1:{port}/")
    assert error.error_type == "EgressDenied"
    assert service in error.message and error.details["service"] == service


@pytest.mark.parametrize(
    "allowed",
    [
        "*",
        "127.0.0.0/8",
        "127.0.0.1:6379",
        "localhost",
        "localhost:6379",
        "::1",
        "[::1]:6379",
        "::ffff:127.0.0.1",
        "0.0.0.0/0,::/0",
    ],
)
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "127.0.0.2",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
        "[::]",
        "[::127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
    ],
)
async def test_redis_is_refused_whatever_the_allowlist_and_the_spelling(
    installation: dict[str, int], handler_env: pytest.MonkeyPatch, allowed: str, host: str
) -> None:
    allow_hosts(handler_env, allowed)
    error = await refused(f"http://{host}:{REDIS_PORT}/")
    assert error.error_type == "EgressDenied", error.message
    assert "Redis" in error.message and error.details["service"] == "Redis"


async def test_a_name_resolving_to_a_protected_service_is_refused(
    installation: dict[str, int], handler_env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("127.0.0.1")]  # attacker.example's DNS answers loopback

    monkeypatch.setattr(egress, "resolve_host", resolve)
    allow_hosts(handler_env, "attacker.example")
    error = await refused(f"http://attacker.example:{installation['the Prefect API']}/api/health")
    assert error.error_type == "EgressDenied" and "the Prefect API" in error.message


class Redirector:
    """Answers /json, and redirects /to?url=... there."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.app = Starlette(routes=[Route("/to", self.to), Route("/json", self.json)])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)

    async def to(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=302)

    async def json(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
def redirector() -> Iterator[tuple[Redirector, int]]:
    app = Redirector()
    with serve_in_thread(app) as server:
        yield app, server.port


async def test_a_redirect_to_the_prefect_api_is_refused(
    installation: dict[str, int], handler_env: pytest.MonkeyPatch, redirector: tuple[Redirector, int]
) -> None:
    app, port = redirector
    allow_hosts(handler_env, f"127.0.0.1:{port}")
    target = f"http://localhost:{installation['the Prefect API']}/api/health"
    error = await refused(f"http://127.0.0.1:{port}/to?url={target}")
    assert error.error_type == "EgressDenied" and "the Prefect API" in error.message


async def test_an_allowed_port_still_works_and_only_that_port(
    installation: dict[str, int],
    handler_env: pytest.MonkeyPatch,
    openai_server: FakeOpenAI,
    redirector: tuple[Redirector, int],
) -> None:
    model_port = urlsplit(openai_server.base_url).port
    allow_hosts(handler_env, f"127.0.0.1:{model_port}")
    completed = await LlmHandler().run(
        LlmConfig.model_validate({"model": "text", "prompt": "Say hello", "base_url": openai_server.base_url}),
        make_context(),
    )
    assert completed.output["text"] == "Hello, world!"
    app, other_port = redirector
    app.paths.clear()
    error = await refused(f"http://127.0.0.1:{other_port}/json")
    assert error.error_type == "EgressDenied" and "a loopback address" in error.message
    assert app.paths == []
    allow_hosts(handler_env, f"127.0.0.1:{model_port},127.0.0.1:{other_port}")
    assert (await call({"url": f"http://127.0.0.1:{other_port}/json"}))["body"] == {"ok": True}


def test_service_addresses_resolve_to_every_loopback_spelling() -> None:
    [prefect] = protect([ServiceAddress("the Prefect API", "localhost", 4200)], own=frozenset())
    policy = EgressPolicy.parse("*", (prefect,))
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"):
        assert policy.protected_service("x", ipaddress.ip_address(address), 4200) == prefect.service, address
        assert policy.protected_service("x", ipaddress.ip_address(address), 4201) is None
    assert policy.protected_service("x", ipaddress.ip_address("93.184.216.34"), 4200) is None
    # A service on another machine is that machine's addresses only.
    [remote] = protect(
        [ServiceAddress("Redis", "redis.internal", 6379)],
        own=frozenset(),
        resolve=lambda host, port: frozenset([ipaddress.ip_address("10.0.0.7")]),
    )
    policy = EgressPolicy.parse("*", (remote,))
    assert policy.protected_service("x", ipaddress.ip_address("10.0.0.7"), 6379) == remote.service
    assert policy.protected_service("x", ipaddress.ip_address("::ffff:10.0.0.7"), 6379) == remote.service
    assert policy.protected_service("redis.internal.", ipaddress.ip_address("10.9.9.9"), 6379) == remote.service
    assert policy.protected_service("x", ipaddress.ip_address("127.0.0.1"), 6379) is None


def test_a_service_bound_to_every_interface_is_protected_on_the_machines_addresses() -> None:
    own = frozenset({ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("127.0.0.1")})
    [api] = protect([ServiceAddress("the FlowMaestro API", "0.0.0.0", 8000)], own=own)
    policy = EgressPolicy.parse("*", (api,), own)
    for address in ("93.184.216.34", "127.0.0.1", "127.0.0.53", "::1", "64:ff9b::5db8:d822"):
        assert policy.protected_service("x", ipaddress.ip_address(address), 8000) == api.service, address


def test_service_addresses_come_from_the_processs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = HandlerSettings.model_validate(
        {
            "PREFECT_API_URL": "https://prefect.internal/api",
            "public_url": "https://flows.example.com",
            "api_bind": "[::]:8000",
            "database_url": "postgresql+asyncpg://fm:pw@db.internal/fm",
            "redis_url": "rediss://:pw@cache.internal:6380/0",
            "cache_lock_redis_url": "unix:///run/redis.sock",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///prefect.db",
        }
    )
    assert service_addresses(settings) == (
        ServiceAddress("the Prefect API", "prefect.internal", 443),
        ServiceAddress("the FlowMaestro API", "flows.example.com", 443),
        ServiceAddress("the FlowMaestro API", "::", 8000),
        ServiceAddress("the FlowMaestro database", "db.internal", 5432),
        ServiceAddress("Redis", "cache.internal", 6380),
    )  # SQLite and unix sockets are not TCP
    monkeypatch.delenv("PREFECT_API_URL")  # then the embedded server's
    embedded = HandlerSettings.model_validate({"server_port": 4300})
    assert ServiceAddress("the Prefect API", "127.0.0.1", 4300) in service_addresses(embedded)
    assert "pw" not in repr(service_addresses(settings))  # no password in a refusal


# The allowlist's syntax


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("models.internal", AllowRule(host="models.internal")),
        ("Models.Internal.:8080", AllowRule(host="models.internal", port=8080)),
        ("10.0.0.0/8", AllowRule(network=ipaddress.ip_network("10.0.0.0/8"))),
        ("10.0.0.0/8:443", AllowRule(network=ipaddress.ip_network("10.0.0.0/8"), port=443)),
        ("127.0.0.1:11434", AllowRule(network=ipaddress.ip_network("127.0.0.1/32"), port=11434)),
        ("[::1]:8080", AllowRule(network=ipaddress.ip_network("::1/128"), port=8080)),
        ("[fd00::/8]:443", AllowRule(network=ipaddress.ip_network("fd00::/8"), port=443)),
        ("fd00::1", AllowRule(network=ipaddress.ip_network("fd00::1/128"))),
        ("[fd00::1]", AllowRule(network=ipaddress.ip_network("fd00::1/128"))),
    ],
)
def test_allowlist_entries_take_a_port(entry: str, rule: AllowRule) -> None:
    assert AllowRule.parse(entry) == rule


@pytest.mark.parametrize(
    "entry", ["127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000", "[::1", "[::1]8080", "a b.example", "host:"]
)
async def test_a_bad_entry_fails_the_node_naming_it(handler_env: pytest.MonkeyPatch, entry: str) -> None:
    allow_hosts(handler_env, f"example.com, {entry}")
    with pytest.raises(NodeError) as caught:
        await call({"url": "http://93.184.216.34/"})
    assert caught.value.error_type == "InvalidSetting"
    assert "FLOWMAESTRO_HTTP_ALLOW_HOSTS" in caught.value.message and repr(entry) in caught.value.message


def test_a_port_scoped_entry_allows_its_port_only() -> None:
    policy = EgressPolicy.parse("127.0.0.1:11434, models.internal:8080")
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal("127.0.0.1", loopback, 11434) is None
    assert policy.refusal("127.0.0.1", loopback, 4200) == "a loopback address"
    private = ipaddress.ip_address("10.1.2.3")
    assert policy.refusal("models.internal", private, 8080) is None
    assert policy.refusal("models.internal", private, 8081) == "a private address"


# Finding 14: only globally routable addresses, IPv4 inside IPv6 checked too


ENCODINGS_OF_LOOPBACK = {
    "64:ff9b::7f00:1": "a NAT64 form of 127.0.0.1",
    "64:ff9b:1::7f00:1": "a NAT64 form of 127.0.0.1",
    "2002:7f00:1::": "a 6to4 form of 127.0.0.1",
    "2002:7f00:1::1": "a 6to4 form of 127.0.0.1",
    "::127.0.0.1": "an IPv4-compatible form of 127.0.0.1",
    "::ffff:127.0.0.1": "an IPv4-mapped form of 127.0.0.1",
    "::ffff:0:127.0.0.1": "an IPv4-translated form of 127.0.0.1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "a Teredo form (client) of 127.0.0.1",  # client bits ~127.0.0.1
    "2001:0:7f00:1::f7f7:f7f7": "a Teredo form (server) of 127.0.0.1",  # client 8.8.8.8
    "64:ff9b::a9fe:a9fe": "a NAT64 form of 169.254.169.254, the cloud metadata endpoint",
    "2002:a00:1::": "a 6to4 form of 10.0.0.1, a private address",
}


@pytest.mark.parametrize("address", list(ENCODINGS_OF_LOOPBACK))
async def test_ipv6_forms_of_loopback_are_refused(handler_env: pytest.MonkeyPatch, address: str) -> None:
    # Loopback allowed by address, as for a local model: its IPv6 disguises are still refused
    # (but for ::ffff:127.0.0.1, which is 127.0.0.1 to the socket layer: refused by default).
    allow_hosts(handler_env, "" if address.startswith("::ffff:127") else "127.0.0.1")
    error = await refused(f"http://[{address}]:8080/")
    assert error.error_type == "EgressDenied", error.message
    assert ENCODINGS_OF_LOOPBACK[address] in error.message


@pytest.mark.parametrize("address", list(ENCODINGS_OF_LOOPBACK))
def test_ipv6_forms_name_the_address_inside(address: str) -> None:
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None and ENCODINGS_OF_LOOPBACK[address] in reason
    assert not EgressPolicy.parse("").allows_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::8.8.8.8", "deprecated"),
        ("::ffff:0:8.8.8.8", "deprecated"),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "global"),
        ("fec0::1", "site-local"),
        ("3fff::1", "documentation"),
        ("5f00::1", "reserved"),
        ("ff0e::1", "multicast"),
        ("100::1", "global"),
        ("2001:db8::1", "global"),
        ("192.0.2.1", "global"),
        ("198.18.0.1", "global"),
    ],
)
def test_non_global_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_global_addresses_and_their_forms_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_the_machines_own_global_address_needs_an_entry_with_a_port() -> None:
    own_address = ipaddress.ip_address("93.184.216.34")
    own = frozenset({own_address, ipaddress.ip_address("127.0.0.1")})
    for allow in ("", "93.184.216.0/24", "93.184.216.34", "x"):
        reason = EgressPolicy.parse(allow, own_addresses=own).refusal("x", own_address, 9000)
        assert reason is not None and "an address of this machine" in reason
    for form in ("::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::"):
        assert EgressPolicy.parse("", own_addresses=own).refusal("x", ipaddress.ip_address(form), 9000) is not None
    scoped = EgressPolicy.parse("93.184.216.34:9000", own_addresses=own)
    assert scoped.refusal("x", own_address, 9000) is None
    assert scoped.refusal("x", own_address, 9001) is not None
    assert EgressPolicy.parse("", own_addresses=own).refusal("x", ipaddress.ip_address("93.184.216.35"), 80) is None


async def test_the_machines_public_address_is_refused_by_default(
    handler_env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine had a public address (as the pentest's did): as a global address it passed.
    public = ipaddress.ip_address("93.184.216.34")
    monkeypatch.setattr(egress, "interface_addresses", lambda: interface_addresses() | {public})
    error = await refused(f"http://{public}:9000/admin")
    assert error.error_type == "EgressDenied" and "an address of this machine" in error.message


def own_ipv4() -> ipaddress.IPv4Address | None:
    found = sorted(a for a in interface_addresses() if a.version == 4 and not a.is_loopback)
    return found[0] if found else None  # type: ignore[return-value]


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_server_on_the_machines_own_address(handler_env: pytest.MonkeyPatch) -> None:
    address = own_ipv4()
    if address is None:  # under CI=true (.ci/run) a skip would pass without the check ever made
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and this machine has no non-loopback IPv4 address", pytrace=False)
        pytest.skip("this machine has no non-loopback IPv4 address")
    server = ThreadingHTTPServer((str(address), 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        network = ipaddress.ip_network(f"{address}/16", strict=False)
        allow_hosts(handler_env, f"{network}")  # its network, without a port: not enough
        error = await refused(f"http://{address}:{port}/")
        assert error.error_type == "EgressDenied" and "an address of this machine" in error.message
        allow_hosts(handler_env, f"{address}:{port}")
        assert (await call({"url": f"http://{address}:{port}/"}))["body"] == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()


# The attack as a canvas, run by a real worker of `flowmaestro serve`


def attack_canvas(prefect_port: int, api_port: int, victim_run: str, allowed_url: str) -> dict[str, Any]:
    targets = {
        "prefect_health": {"url": f"http://127.0.0.1:{prefect_port}/api/health"},
        "prefect_set_state": {
            "url": f"http://127.0.0.1:{prefect_port}/api/flow_runs/{victim_run}/set_state",
            "method": "POST",
            "json": {"state": {"type": "FAILED", "message": "pwned"}, "force": True},
        },
        "api_health": {"url": f"http://127.0.0.1:{api_port}/health"},
        "redis": {"url": f"http://localhost:{REDIS_PORT}/"},
    }
    nodes: list[dict[str, Any]] = [
        {"id": "start", "type": "start", "data": {}},
        {"id": "allowed", "type": "http", "data": {"url": allowed_url}},
    ]
    edges: list[dict[str, Any]] = [{"id": "to-allowed", "source": "start", "target": "allowed"}]
    for node_id, data in targets.items():
        nodes += [
            {"id": node_id, "type": "http", "data": data},
            {"id": f"{node_id}_caught", "type": "transform", "data": {"output": "caught"}},
        ]
        edges += [
            {"id": f"to-{node_id}", "source": "start", "target": node_id},
            {"id": f"catch-{node_id}", "source": node_id, "target": f"{node_id}_caught", "sourceHandle": "error"},
        ]
    return {"name": f"egress-{uuid.uuid4().hex[:6]}", "nodes": nodes, "edges": edges}


@pytest.mark.prefect  # `served`, like tests/test_secrets.py: the session's Prefect server, one serve
def test_a_canvas_cannot_reach_prefect_the_api_or_redis(served, counting, prefect_server) -> None:
    owner = {"Authorization": f"Bearer {served.owner_key}"}
    api_port = urlsplit(served.base).port
    with httpx.Client(base_url=served.base, headers=owner, timeout=60) as api:

        def run(canvas: dict[str, Any]) -> dict[str, Any]:
            saved = api.post("/api/workflows", json={"canvas": canvas})
            assert saved.status_code == 201, saved.text
            run_id = api.post(f"/api/workflows/{saved.json()['id']}/execute", json={"inputs": {}}).json()[
                "execution_id"
            ]
            return wait_until(
                lambda: (
                    (body := api.get(f"/api/executions/{run_id}").json())["status"]
                    in ("completed", "failed", "cancelled")
                    and body
                ),
                timeout=180,
                what=f"run {run_id} ending",
            )

        victim = run(
            {
                "name": f"victim-{uuid.uuid4().hex[:6]}",
                "nodes": [
                    {"id": "start", "type": "start", "data": {}},
                    {"id": "fetch", "type": "http", "data": {"url": f"{counting.url}/victim"}},
                ],
                "edges": [{"id": "a", "source": "start", "target": "fetch"}],
            }
        )
        assert victim["status"] == "completed", victim
        result = run(
            attack_canvas(urlsplit(prefect_server.api_url).port, api_port, victim["id"], f"{counting.url}/allowed")
        )
    assert result["status"] == "completed", result
    nodes = result["nodes"]
    assert nodes["allowed"]["status"] == "completed" and nodes["allowed"]["output"]["status"] == 200
    for node_id, service in (
        ("prefect_health", "the Prefect API"),
        ("prefect_set_state", "the Prefect API"),
        ("api_health", "the FlowMaestro API"),
        ("redis", "Redis"),
    ):
        error = nodes[node_id]["error"]
        assert nodes[node_id]["status"] == "failed", nodes[node_id]
        assert error["type"] == "EgressDenied" and service in error["message"], error
    victim_flow_run = httpx.get(f"{prefect_server.api_url}/flow_runs/{victim['flow_run_id']}").json()
    assert victim_flow_run["state"]["type"] == "COMPLETED"
