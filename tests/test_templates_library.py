"""The templates library.

Without services: the bundled library has at least ten templates, each compiles, together
they use every built-in node type, and what each says it needs is what its nodes name.

With services (one module stack: a PostgreSQL store, a worker in this process on the
session's Prefect server, a local model server whose replies are scripted per model name,
and a local HTTP server standing in for the services the templates call): the routes
(list, filters, read, an owner's template, instantiate), and every bundled template
instantiated and run end to end, all at once, its approval answered through the API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.app import create_app
from api.settings import ApiSettings
from api.template_library import CHILD_PREFIX, bundled
from builder.compiler import compile_canvas
from builder.workflow_refs import remap_workflow_refs
from node_handlers.credentials import named_credentials
from node_handlers.registry import build_registry
from tests.agent_server import Call, Say, ToolModel, tool_model
from tests.openai_server import serve_in_thread
from tests.support import hello, save, wait_execution
from tests.support import wait_final as _wait_final

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_KEY = "templates-" + uuid.uuid4().hex
BUILTIN_TYPES = {
    "start", "end", "transform", "condition", "router", "merge", "http", "llm", "agent", "code",
    "delay", "approval", "set_variable", "subworkflow", "loop", "parallel",
}  # fmt: skip


def _documents(template: Any) -> list[dict[str, Any]]:
    ids = {CHILD_PREFIX + key: str(uuid.UUID(int=i + 1)) for i, key in enumerate(template.children)}
    return [remap_workflow_refs(c, ids) for c in (template.canvas, *template.children.values())]


def test_the_bundled_library_compiles_and_covers_the_node_types() -> None:
    templates = bundled()
    assert len(templates) >= 10
    assert len({t.id for t in templates}) == len(templates)
    registry = build_registry()
    used: set[str] = set()
    for template in templates:
        for document in _documents(template):
            result = compile_canvas(document, registry)
            assert result.ok, (template.id, [str(i) for i in result.issues])
            assert not result.warnings, (template.id, [str(i) for i in result.warnings])
            used |= {n["type"] for n in document["nodes"]}
        refs = template.needs()["workflows"]
        assert sorted(refs) == sorted(CHILD_PREFIX + key for key in template.children), template.id
        assert template.name and template.description and template.category, template.id
    assert used >= BUILTIN_TYPES, BUILTIN_TYPES - used


def test_each_template_declares_what_it_needs() -> None:
    for template in bundled():
        needs = template.needs()
        named = {name for doc in (template.canvas, *template.children.values()) for _, name in named_credentials(doc)}
        assert {c["name"] for c in needs["credentials"]} == named == set(template.credential_types), template.id
        assert all(c.get("type") and c.get("description") and c["used_by"] for c in needs["credentials"])
        assert needs["inputs"] == template.canvas.get("inputs", {})
        models = {n["type"] for n in template.canvas["nodes"]} & {"llm", "router", "agent"}
        assert bool(needs["providers"]) == bool(models), template.id


# --- with services -------------------------------------------------------------------------


class Services:
    """The services the templates call, on one local server: requests recorded, answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.crm_failures: dict[str, int] = {}

    def app(self) -> Starlette:
        async def answer(request: Request) -> JSONResponse:
            path = request.url.path
            body = await request.json() if request.method in ("POST", "PUT") else None
            self.requests.append(
                {
                    "method": request.method,
                    "path": path,
                    "json": body,
                    "auth": request.headers.get("authorization"),
                    "at": time.monotonic(),
                }
            )
            if path.startswith("/crm/records/"):
                # The first two attempts fail: the template's retry policy gets it through.
                failed = self.crm_failures.get(path, 0)
                if failed < 2:
                    self.crm_failures[path] = failed + 1
                    return JSONResponse({"error": "busy"}, status_code=503)
                return JSONResponse({"saved": True})
            if path.startswith("/companies/companies/"):
                domain = path.rsplit("/", 1)[1]
                if domain == "unknown.example":
                    return JSONResponse({"error": "no such company"}, status_code=404)
                return JSONResponse({"name": domain.split(".")[0].title(), "employees": len(domain) * 10})
            if path == "/metrics/weekly":
                return JSONResponse({"signups": 42, "churn": 3})
            if path == "/mail/messages":
                return JSONResponse({"id": "M-1"}, status_code=201)
            return JSONResponse({"ok": True, "path": path})

        return Starlette(routes=[Route("/{rest:path}", answer, methods=["GET", "POST", "PUT"])])

    def of(self, prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(prefix)]


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[Services, str]]:
    local = Services()
    with serve_in_thread(local.app()) as server:
        yield local, server.url


@pytest.fixture(scope="module")
def model() -> Iterator[ToolModel]:
    with tool_model() as server:
        yield server


@pytest.fixture(scope="module")
async def stack(prefect_server, in_process_workers, model):
    from store.db import upgrade_schema

    name = f"fm_templates_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    pool = f"templates-{uuid.uuid4().hex[:6]}"
    await upgrade_schema(url)
    with pytest.MonkeyPatch.context() as env:
        # The worker: stored credentials opened with the API's key ring, local servers allowed,
        # the model server as the OpenAI-compatible provider.
        env.setenv("FLOWMAESTRO_SECRET_KEY", SECRET_KEY)
        env.setenv("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")
        env.setenv("FLOWMAESTRO_OPENAI_BASE_URL", model.base_url)
        env.setenv("OPENAI_API_KEY", "sk-templates")
        await in_process_workers.start(url, pool)
        yield url, pool
        await in_process_workers.stop_all()
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def api(stack, tmp_path):
    url, pool = stack
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    settings = ApiSettings(
        database_url=url,
        api_keys=f"{alice}:key-{alice},{bob}:key-{bob}",
        home=tmp_path,
        work_pool=pool,
        secret_key=SECRET_KEY,
        prefect_timeout_s=60,  # the machine is shared: Prefect may answer slowly, which is not the point here
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer key-{alice}"},
            timeout=60,
        ) as client:
            client.bob = {"Authorization": f"Bearer key-{bob}"}  # type: ignore[attr-defined]
            yield client


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_the_template_routes(api) -> None:
    listed = await ok(await api.get("/api/templates"))
    assert [t["id"] for t in listed] == [t.id for t in bundled()]
    assert all(t["source"] == "bundled" and "canvas" not in t for t in listed)
    support = await ok(await api.get("/api/templates", params={"category": "support"}))
    assert [t["id"] for t in support] == ["support-triage-approval"]
    searched = await ok(await api.get("/api/templates", params={"q": "SUB-WORKFLOW"}))
    assert {t["id"] for t in searched} == {"onboarding-subworkflow"}
    assert await ok(await api.get("/api/templates", params={"q": "nothing like this"})) == []

    one = await ok(await api.get("/api/templates/support-triage-approval"))
    assert one["canvas"]["name"] == "support-triage-approval"
    assert one["needs"]["credentials"] == [
        {"name": "helpdesk", "type": "bearer", "description": "API token of the helpdesk that records refunds",
         "used_by": ["refund"]}
    ]  # fmt: skip
    assert set(one["needs"]["inputs"]) == {"ticket", "customer_email", "api_base", "model"}
    assert one["needs"]["providers"] == ["openai"]
    report = await ok(await api.get("/api/templates/scheduled-report"))
    assert report["suggested"]["schedule"]["cron"] == "0 8 * * 1"
    assert (await api.get("/api/templates/no-such-template")).status_code == 404

    # An owner's template, from a version of their workflow: theirs only.
    source = hello(f"mine-{uuid.uuid4().hex[:6]}")
    wid = (await save(api, source))["id"]
    body = {"workflow_id": wid, "name": "Greeter", "description": "says hello", "category": "greetings"}
    mine = await ok(await api.post("/api/templates", json=body), 201)
    assert mine["source"] == "owner" and mine["canvas"] == source and mine["needs"]["inputs"] == source["inputs"]
    assert [t["id"] for t in await ok(await api.get("/api/templates", params={"category": "greetings"}))] == [
        mine["id"]
    ]
    assert [t["id"] for t in await ok(await api.get("/api/templates", params={"q": "says hel"}))] == [mine["id"]]
    assert mine["id"] not in (await api.get("/api/templates", headers=api.bob)).text
    assert (await api.get(f"/api/templates/{mine['id']}", headers=api.bob)).status_code == 404
    assert (await api.post("/api/templates", json=body, headers=api.bob)).status_code == 404
    for bad, field in (
        ({**body, "category": "Not OK"}, "category"),
        ({**body, "version": 9}, "version 9"),
        ({k: v for k, v in body.items() if k != "name"}, "name"),
    ):
        answer = await api.post("/api/templates", json=bad)
        assert answer.status_code in (404, 422) and field in answer.text, answer.text

    made = await ok(await api.post(f"/api/templates/{mine['id']}/instantiate", json={"name": "greeter-copy"}), 201)
    assert made["name"] == "greeter-copy" and made["version"] == 1 and made["children"] == []
    read = await ok(await api.get(f"/api/workflows/{made['id']}"))
    assert read["canvas"]["nodes"] == source["nodes"]
    taken = await api.post(f"/api/templates/{mine['id']}/instantiate", json={"name": "greeter-copy"})
    assert taken.status_code == 409
    assert (await api.post("/api/templates/nope/instantiate", json={})).status_code == 404

    # A template with a child, used twice: each use has its own child, the reference set to it.
    for name in ("agent-one", "agent-two"):
        used = await ok(await api.post("/api/templates/order-support-agent/instantiate", json={"name": name}), 201)
        (child,) = used["children"]
        assert child["name"] == f"{name}: order-lookup"
        read = await ok(await api.get(f"/api/workflows/{used['id']}"))
        assert read["canvas"]["nodes"][1]["data"]["tools"][0]["workflow"] == child["id"]


def scripts(model: ToolModel, tag: str) -> dict[str, str]:
    """A model name per template using one, its replies scripted."""
    return {
        "triage": model.script(f"triage-{tag}", Say(('{"route": "refund", ', '"reasoning": "wants money back"}'))),
        "agent": model.script(
            f"agent-{tag}", Call((("lookup_order", {"order_id": "A100"}),)), Say(("Order A100 ", "has shipped."))
        ),
        "report": model.script(f"report-{tag}", Say(("Signups are up: 42.",))),
        "router": model.script(f"router-{tag}", Say(('{"route": "review", "reasoning": "unclear"}',))),
    }


async def test_every_bundled_template_runs_end_to_end(api, services, model) -> None:
    local, base = services
    models = scripts(model, uuid.uuid4().hex[:6])
    for credential in ("helpdesk", "orders_api", "metrics_api", "crm_api", "mail_api"):
        stored = {"name": credential, "type": "bearer", "data": {"token": f"token-of-{credential}"}}
        await ok(await api.post("/api/credentials", json=stored), 201)
    inputs = {
        "support-triage-approval": {
            "ticket": "I want my money back", "customer_email": "ann@example.com",
            "api_base": f"{base}/helpdesk", "model": models["triage"],
        },
        "order-support-agent": {"question": "Where is order A100?", "model": models["agent"]},
        "webhook-transform-http": {
            "event": {"type": "order.created", "data": {"id": "O-7", "total": 12.5, "currency": "eur"}},
            "target_url": f"{base}/orders",
        },
        "scheduled-report": {
            "metrics_url": f"{base}/metrics/weekly", "report_url": f"{base}/chat", "model": models["report"],
        },
        "parallel-enrichment": {
            "contacts": [
                {"email": "a@acme.example", "domain": "acme.example"},
                {"email": "b@unknown.example", "domain": "unknown.example"},
                {"email": "c@bigcorporation.example", "domain": "bigcorporation.example"},
            ],
            "api_base": f"{base}/companies",
        },
        "retrying-integration": {"record": {"id": "C-1", "name": "Ada"}, "api_base": f"{base}/crm"},
        "content-router": {"content": "Is this allowed?", "model": models["router"]},
        "loop-over-items": {"items": ["x", "y", "z"], "api_base": f"{base}/inventory"},
        "onboarding-subworkflow": {"user": {"email": "new@example.com", "name": "Neo"}, "api_base": f"{base}/mail"},
        "delay-reminder": {"who": "ann", "message": "renew", "wait_s": 1, "api_base": f"{base}/notify"},
    }  # fmt: skip
    assert set(inputs) == {t.id for t in bundled()}, "a bundled template without a run here"
    tag = uuid.uuid4().hex[:6]

    made = {}
    for template_id in inputs:  # one after the other: each is a deployment or two in Prefect
        body = {"name": f"{template_id}-{tag}"}
        made[template_id] = await ok(await api.post(f"/api/templates/{template_id}/instantiate", json=body), 201)
        assert not [w for w in made[template_id]["warnings"] if w["code"] == "missing_credential"], made

    runs, started_at = {}, {}
    for template_id in inputs:  # started one after the other, they run at once on the worker
        body = {"inputs": inputs[template_id]}
        started_at[template_id] = time.monotonic()
        started = await api.post(f"/api/workflows/{made[template_id]['id']}/execute", json=body)
        runs[template_id] = (await ok(started, 202))["execution_id"]

    # The triage waits for a person: approved through the API with the amount.
    waiting = await wait_execution(
        api, runs["support-triage-approval"], lambda b: b.get("pending_approvals"), timeout=120, what="the approval"
    )
    assert waiting["pending_approvals"][0]["node_id"] == "review"
    decision = {"node_id": "review", "input": {"approved": True, "amount": 19.99}}
    await ok(await api.post(f"/api/executions/{runs['support-triage-approval']}/resume", json=decision))

    results = dict(zip(runs, await asyncio.gather(*(_wait_final(api, r, timeout=150) for r in runs.values()))))
    failed = {t: r.get("error") or r.get("status") for t, r in results.items() if r["status"] != "completed"}
    assert not failed, failed
    out = {t: r["output"] for t, r in results.items()}

    assert out["support-triage-approval"]["route"] == "refund"
    assert out["support-triage-approval"]["refund"] == {"ok": True, "path": "/helpdesk/refunds"}
    (refund,) = local.of("/helpdesk/refunds")
    assert refund["json"] == {"email": "ann@example.com", "amount": 19.99}
    assert refund["auth"] == "Bearer token-of-helpdesk"

    assert out["order-support-agent"] == {"answer": "Order A100 has shipped.", "turns": 2}
    assert out["webhook-transform-http"]["forwarded"] is True
    (forwarded,) = local.of("/orders")
    assert forwarded["json"] == {"order_id": "O-7", "total": 12.5, "currency": "EUR"}
    assert forwarded["auth"] == "Bearer token-of-orders_api"
    assert out["scheduled-report"] == {"summary": "Signups are up: 42.", "posted": 200}
    assert local.of("/chat")[0]["json"] == {"text": "Signups are up: 42."}
    assert local.of("/metrics/weekly")[0]["auth"] == "Bearer token-of-metrics_api"
    ranked = out["parallel-enrichment"]
    assert [r["email"] for r in ranked["ranked"]] == ["c@bigcorporation.example", "a@acme.example"]
    assert ranked["best"] == "c@bigcorporation.example"
    assert out["retrying-integration"] == {"status": 200, "synced": {"id": "C-1", "ok": True}}
    assert len(local.of("/crm/records/C-1")) == 3  # two 503s, then saved
    assert out["content-router"]["decision"] == "review" and out["content-router"]["note"]
    assert out["loop-over-items"] == {"sent": 3, "iterations": 3}
    assert [r["json"] for r in local.of("/inventory/items")] == [
        {"item": "x", "position": 1},
        {"item": "y", "position": 2},
        {"item": "z", "position": 3},
    ]
    assert out["onboarding-subworkflow"]["welcome"] == {"message_id": "M-1", "subject": "Welcome, Neo!"}
    assert local.of("/mail/messages")[0]["auth"] == "Bearer token-of-mail_api"
    assert out["delay-reminder"]["sent"] == 200 and "waited_s" in out["delay-reminder"]
    (reminder,) = local.of("/notify/reminders")
    assert reminder["json"] == {"to": "ann", "text": "renew"}
    assert reminder["at"] - started_at["delay-reminder"] >= 1.0  # not before the delay was over
