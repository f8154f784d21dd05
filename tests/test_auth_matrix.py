"""Every route of the app x {no key, wrong key, another owner, the owner}.

The routes are read from the app itself, so a route added later is in the matrix at once:
it must be classified below (how it is protected) and, when it takes a bearer key, have a
recipe (how to call it on the owner's objects). Until then this test fails saying so.

One "world" of the owner's objects (a workflow with a schedule and a webhook, runs, a dead
letter) is built through the API on the session's Prefect server; its work pool has no
worker, so runs stay where the test puts them. Routes run in an order that keeps the world
whole: deletions last, the most specific first.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from api.app import create_app
from api.settings import ApiSettings
from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from flows.events import RunEvent, utcnow
from store.queries import NodeOutcome
from tests.support import canvas, eventually, node

pytestmark = pytest.mark.prefect

OWNER_KEY, OTHER_KEY = "owner-key-" + uuid.uuid4().hex, "other-key-" + uuid.uuid4().hex
METRICS_KEY = "metrics-key-" + uuid.uuid4().hex
ADMIN_KEY = "admin-key-" + uuid.uuid4().hex

# How each route is protected. A route in none of these fails the test.
PUBLIC = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/health", "/docs/static"}
"""No key needed, and nothing of any owner in the answer."""
OPERATOR = {"/metrics"}
"""Everyone's numbers: the metrics key when one is set (it is here); closed otherwise unless
FLOWMAESTRO_METRICS_PUBLIC=true (tests/security/test_secrets_hygiene.py)."""
ADMIN = {"/api/admin/keys", "/api/admin/keys/{key_id}"}
"""Owners' keys, managed with the admin key only (an owner's key is refused); closed
without one (tests/test_api_keys.py)."""
SIGNED = {"/hooks/{hook_id}"}
"""Authenticated by the webhook's HMAC signature; a bearer key grants nothing."""
LINKED = {"/api/approval-link", "/api/approval-link/decide"}
"""Authorised by a decision link's signed token in the body (api/approval_links.py); a bearer
key grants nothing."""
PUBLIC_SHELL_PREFIX = "/ui"
"""HTML pages that are shells: public, their data comes from the bearer routes."""
TOKEN_ALSO = {"/api/executions/{execution_id}/stream"}
"""Bearer routes that also take a short-lived ``?token=`` (EventSource cannot send headers)."""


@dataclass(frozen=True)
class Recipe:
    """How to call a bearer route on the owner's world. ``params`` name world fields;
    ``owner`` is the status the owner gets (the route's declared one when None)."""

    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    query: dict[str, str] = field(default_factory=dict)
    owner: int | None = None
    lists: str | None = None
    """For a collection: the world field whose id the owner sees in it and another owner does not."""
    shared: bool = False
    """The installation's, not an owner's (the node catalog): every owner gets the same answer."""
    other: int | None = None
    """The status another owner gets from a route without ids in its path whose body names the
    owner's objects (the declared one when None)."""


RECIPES: dict[tuple[str, str], Recipe] = {
    # Names are unique per owner: another owner may take the owner's name, the owner may not.
    ("POST", "/api/workflows"): Recipe(json={"canvas": "same-name"}, owner=409),
    ("GET", "/api/workflows"): Recipe(lists="workflow"),
    ("POST", "/api/workflows/validate"): Recipe(json={"canvas": "same-name"}),
    ("GET", "/api/workflows/{workflow_id}"): Recipe({"workflow_id": "workflow"}),
    ("PUT", "/api/workflows/{workflow_id}"): Recipe({"workflow_id": "workflow"}, json={"canvas": "same-name"}),
    ("DELETE", "/api/workflows/{workflow_id}"): Recipe({"workflow_id": "workflow"}),
    ("POST", "/api/workflows/{workflow_id}/execute"): Recipe({"workflow_id": "workflow"}, json={}),
    ("GET", "/api/executions"): Recipe(lists="execution"),
    ("GET", "/api/executions/{execution_id}"): Recipe({"execution_id": "execution"}),
    ("POST", "/api/executions/{execution_id}/cancel"): Recipe({"execution_id": "execution"}),
    ("POST", "/api/executions/{execution_id}/retry"): Recipe({"execution_id": "cancelled"}, json={}),
    # Nothing of that node waits: the owner is let in and told so.
    ("POST", "/api/executions/{execution_id}/resume"): Recipe(
        {"execution_id": "execution"}, json={"node_id": "nobody", "input": {}}, owner=409
    ),
    # A run not started yet (no worker here) takes the request: it pauses before its first node.
    ("POST", "/api/executions/{execution_id}/pause"): Recipe({"execution_id": "streamed"}),
    ("GET", "/api/executions/{execution_id}/stream"): Recipe({"execution_id": "streamed"}),
    ("POST", "/api/executions/{execution_id}/stream-token"): Recipe({"execution_id": "execution"}),
    ("GET", "/api/executions/{execution_id}/outputs/{ref}"): Recipe({"execution_id": "execution", "ref": "output_ref"}),
    ("GET", "/api/dead-letters"): Recipe(lists="dead_letter"),
    # A retry dismisses its run's dead letters: the one deleted below is of another run.
    ("POST", "/api/dead-letters/{dead_letter_id}/retry"): Recipe({"dead_letter_id": "retried_letter"}),
    ("DELETE", "/api/dead-letters/{dead_letter_id}"): Recipe({"dead_letter_id": "dead_letter"}),
    ("POST", "/api/workflows/{workflow_id}/schedules"): Recipe(
        {"workflow_id": "workflow"}, json={"interval_s": 3600, "active": False}
    ),
    ("GET", "/api/workflows/{workflow_id}/schedules"): Recipe({"workflow_id": "workflow"}),
    ("PATCH", "/api/workflows/{workflow_id}/schedules/{schedule_id}"): Recipe(
        {"workflow_id": "workflow", "schedule_id": "schedule"}, json={"active": False}
    ),
    ("DELETE", "/api/workflows/{workflow_id}/schedules/{schedule_id}"): Recipe(
        {"workflow_id": "workflow", "schedule_id": "schedule"}
    ),
    ("POST", "/api/workflows/{workflow_id}/webhooks"): Recipe({"workflow_id": "workflow"}, json={"name": "again"}),
    ("GET", "/api/workflows/{workflow_id}/webhooks"): Recipe({"workflow_id": "workflow"}),
    ("POST", "/api/workflows/{workflow_id}/webhooks/{hook_id}/rotate"): Recipe(
        {"workflow_id": "workflow", "hook_id": "hook"}
    ),
    ("DELETE", "/api/workflows/{workflow_id}/webhooks/{hook_id}"): Recipe(
        {"workflow_id": "workflow", "hook_id": "hook"}
    ),
    # Credential names are unique per owner, like workflow names.
    ("POST", "/api/credentials"): Recipe(
        json={"name": "matrix-credential", "type": "bearer", "data": {"token": "t"}}, owner=409
    ),
    ("GET", "/api/credentials"): Recipe(lists="credential"),
    ("GET", "/api/credentials/{credential_id}"): Recipe({"credential_id": "credential"}),
    ("PUT", "/api/credentials/{credential_id}"): Recipe({"credential_id": "credential"}, json={"data": {"token": "u"}}),
    ("DELETE", "/api/credentials/{credential_id}"): Recipe({"credential_id": "credential"}),
    ("GET", "/api/executions/{execution_id}/nodes"): Recipe({"execution_id": "execution"}),
    ("POST", "/api/executions/{execution_id}/rerun"): Recipe(
        {"execution_id": "rerun_source"}, json={"from_node": "end"}
    ),
    # No worker: the test's run does not end within the (shortened) wait.
    ("POST", "/api/workflows/{workflow_id}/nodes/{node_id}/test"): Recipe(
        {"workflow_id": "workflow", "node_id": "tested_node"}, json={}, owner=202
    ),
    ("PATCH", "/api/workflows/{workflow_id}"): Recipe({"workflow_id": "workflow"}, json={"tags": ["matrix"]}),
    ("GET", "/api/audit"): Recipe(lists="workflow"),
    ("POST", "/api/budgets"): Recipe(json={"scope": "owner", "period": "day", "max_tokens": 1000}),
    ("GET", "/api/budgets"): Recipe(lists="budget"),
    ("GET", "/api/budgets/{budget_id}"): Recipe({"budget_id": "budget"}),
    ("PATCH", "/api/budgets/{budget_id}"): Recipe({"budget_id": "budget"}, json={"max_tokens": 2000}),
    ("DELETE", "/api/budgets/{budget_id}"): Recipe({"budget_id": "budget"}),
    # Approvals are decided across owners by the people they name: nothing waits in the world's
    # runs, so every caller is told the approval is not found (not whose run it is).
    ("GET", "/api/approvals"): Recipe(),
    ("GET", "/api/approvals/{approval_id}"): Recipe({"approval_id": "approval"}, owner=404),
    ("POST", "/api/approvals/{approval_id}/decide"): Recipe(
        {"approval_id": "approval"}, json={"approved": True}, owner=404
    ),
    # Group names are unique per owner, like workflow names.
    ("POST", "/api/groups"): Recipe(json={"name": "matrix-group", "members": ["owner"]}, owner=409),
    ("GET", "/api/groups"): Recipe(lists="group"),
    ("GET", "/api/groups/{group_id}"): Recipe({"group_id": "group"}),
    ("PUT", "/api/groups/{group_id}"): Recipe({"group_id": "group"}, json={"name": "matrix-group", "members": []}),
    ("DELETE", "/api/groups/{group_id}"): Recipe({"group_id": "group"}),
    ("GET", "/api/node-types"): Recipe(shared=True),
    # The workflow library (api/versions.py, api/bundles.py, api/templates.py).
    ("GET", "/api/workflows/{workflow_id}/versions"): Recipe({"workflow_id": "workflow"}),
    ("GET", "/api/workflows/{workflow_id}/diff"): Recipe({"workflow_id": "workflow"}, query={"from": "1"}),
    # The latest version is version 1's canvas already (a PUT of the same canvas makes none).
    ("POST", "/api/workflows/{workflow_id}/rollback"): Recipe(
        {"workflow_id": "workflow"}, json={"version": 1}, owner=409
    ),
    ("GET", "/api/workflows/{workflow_id}/export"): Recipe({"workflow_id": "workflow"}),
    ("POST", "/api/workflows/import"): Recipe(json={"import": "bundle"}),
    ("GET", "/api/templates"): Recipe(lists="template"),
    ("GET", "/api/templates/{template_id}"): Recipe({"template_id": "template"}),
    ("POST", "/api/templates"): Recipe(json={"template_of": "workflow"}, other=404),
    ("POST", "/api/templates/{template_id}/instantiate"): Recipe(
        {"template_id": "template"}, json={"name": "matrix-instantiated"}
    ),
    ("GET", "/api/node-types/{node_type}"): Recipe({"node_type": "node_type"}, shared=True),
}


@dataclass
class World:
    """The owner's objects, by the names recipes use."""

    name: str
    workflow: str = ""
    execution: str = ""
    cancelled: str = ""
    streamed: str = ""
    dead_letter: str = ""
    retried_letter: str = ""
    schedule: str = ""
    hook: str = ""
    hook_secret: str = ""
    output_ref: str = ""
    credential: str = ""
    budget: str = ""
    node_type: str = "transform"
    tested_node: str = "end"
    rerun_source: str = ""
    """A cancelled run that nothing retries."""
    template: str = ""
    group: str = ""
    approval: str = ""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    declared_status: int | None


def app_routes(app) -> list[Route]:
    """Every (method, path) the app answers, from its router (HEAD as its GET)."""
    found = []
    for context in iter_route_contexts(app.routes):
        path = context.path
        for method in sorted((context.methods or {"*"}) - {"HEAD"}):
            found.append(Route(method, path, getattr(context, "status_code", None)))
    return found


def access_of(route: Route) -> str:
    if route.path in PUBLIC:
        return "public"
    if route.path in SIGNED:
        return "signed"
    if route.path in OPERATOR:
        return "operator"
    if route.path in ADMIN:
        return "admin"
    if route.path in LINKED:
        return "link"
    if route.path == PUBLIC_SHELL_PREFIX or route.path.startswith(PUBLIC_SHELL_PREFIX + "/"):
        return "shell"
    if route.path.startswith("/api/"):
        return "bearer"
    return "unclassified"


def order(route: Route) -> tuple[int, int]:
    """Signed deliveries first (before a rotation changes the secret), deletions last, the
    most specific first (a schedule before its workflow)."""
    if route.path in SIGNED:
        return (-1, 0)
    return (1, -route.path.count("/")) if route.method == "DELETE" else (0, 0)


def hello(name: str) -> dict[str, Any]:
    return canvas([node("start", "start"), node("end", "end", data={"output": "done"})], [("start", "end")], name=name)


@pytest.fixture
async def clients(tmp_path, prefect_server):
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'matrix.db'}",
        home=tmp_path,
        api_keys=f"owner:{OWNER_KEY},other:{OTHER_KEY}",
        metrics_key=METRICS_KEY,
        admin_key=ADMIN_KEY,
        work_pool=f"matrix-{uuid.uuid4().hex[:8]}",
        node_test_wait_s=0.5,
    )  # no worker: runs stay put
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60
        ) as client:
            yield app, client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def build_world(app, client: httpx.AsyncClient) -> World:
    owner = bearer(OWNER_KEY)
    world = World(name=f"matrix-{uuid.uuid4().hex[:6]}")

    async def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code < 300, response.text
        return response.json()

    world.workflow = (await ok(await client.post("/api/workflows", json={"canvas": hello(world.name)}, headers=owner)))[
        "id"
    ]

    async def run() -> str:
        answer = await ok(await client.post(f"/api/workflows/{world.workflow}/execute", json={}, headers=owner))
        return answer["execution_id"]

    world.execution, world.cancelled, world.streamed, *lettered = [await run() for _ in range(5)]

    in_flight = (world.execution, world.streamed)

    async def created() -> bool:  # what pauses or resumes them needs their flow runs: the drainer makes them
        answers = [await ok(await client.get(f"/api/executions/{i}", headers=owner)) for i in in_flight]
        return all(answer["flow_run_id"] is not None for answer in answers)

    await eventually(created, timeout=60, what="the world's runs' flow runs created")
    for run_id in (world.cancelled, *lettered):  # retryable: not started yet, so cancelled at once
        assert (await ok(await client.post(f"/api/executions/{run_id}/cancel", headers=owner)))["status"] == "cancelled"
    # The stream of a run whose final event is stored ends at once.
    await app.state.event_log.append(
        [RunEvent(1, "execution:completed", world.streamed, utcnow().isoformat(), data={"status": "completed"})]
    )
    outcome = NodeOutcome("end", (), "key", "failed", {"error": {"message": "boom"}, "config": {}}, 3, True)
    for run_id in lettered:
        await app.state.runs.outcomes.save(run_id, [outcome], workflow_id=world.workflow, owner="owner")
    letters = {
        letter["execution_id"]: letter["id"]
        for letter in await ok(await client.get("/api/dead-letters", headers=owner))
    }
    world.dead_letter, world.retried_letter = letters[lettered[0]], letters[lettered[1]]
    world.rerun_source = lettered[0]
    world.schedule = (
        await ok(
            await client.post(
                f"/api/workflows/{world.workflow}/schedules", json={"interval_s": 3600, "active": False}, headers=owner
            )
        )
    )["id"]
    hook = await ok(await client.post(f"/api/workflows/{world.workflow}/webhooks", json={"name": "h"}, headers=owner))
    world.hook, world.hook_secret = hook["id"], hook["secret"]
    # A large output of the run, where a worker would have kept it.
    world.output_ref = uuid.uuid4().hex
    await app.state.runs.executions.keep_output(world.execution, world.output_ref, b'"large"')
    credential = {"name": "matrix-credential", "type": "bearer", "data": {"token": "t"}}
    world.credential = (await ok(await client.post("/api/credentials", json=credential, headers=owner)))["id"]
    template = {"workflow_id": world.workflow, "name": "matrix template", "category": "matrix"}
    world.template = (await ok(await client.post("/api/templates", json=template, headers=owner)))["id"]
    budget = {"scope": "workflow", "workflow_id": world.workflow, "period": "month", "max_cost_usd": 5.0}
    world.budget = (await ok(await client.post("/api/budgets", json=budget, headers=owner)))["id"]
    group = {"name": "matrix-group", "members": ["owner"]}
    world.group = (await ok(await client.post("/api/groups", json=group, headers=owner)))["id"]
    world.approval = f"{world.execution}.nobody-waits"
    return world


def body_of(recipe: Recipe, world: World) -> Any:
    if recipe.json == {"canvas": "same-name"}:  # the owner's workflow name: another owner may use it too
        return {"canvas": hello(world.name)}
    if recipe.json == {"import": "bundle"}:  # a bundle of one workflow, each owner imports it once
        version = {"version": 1, "canvas": hello(world.name + "-imported")}
        return {"workflows": [{"id": "exported-id", "name": world.name + "-imported", "versions": [version]}]}
    if recipe.json == {"template_of": "workflow"}:
        return {"workflow_id": world.workflow, "name": "from the matrix", "category": "matrix"}
    return recipe.json


async def test_every_route_is_classified_and_guarded(clients):
    app, client = clients
    routes = sorted(app_routes(app), key=order)
    unclassified = [f"{r.method} {r.path}" for r in routes if access_of(r) == "unclassified"]
    assert not unclassified, (
        f"routes with no access class: {unclassified}. Add each to PUBLIC, OPERATOR, ADMIN, SIGNED or TOKEN_ALSO in "
        "tests/test_auth_matrix.py (or put it under /api/ with a bearer key, or /ui/ as a public shell), "
        "and say how it is protected in docs/security.md"
    )
    missing = [f"{r.method} {r.path}" for r in routes if access_of(r) == "bearer" and (r.method, r.path) not in RECIPES]
    assert not missing, (
        f"bearer routes with no recipe: {missing}. Add a Recipe to RECIPES in "
        "tests/test_auth_matrix.py: which world objects its path takes, its body, the "
        "owner's status if not the declared one"
    )

    world = await build_world(app, client)
    checked: list[str] = []
    for route in routes:
        access = access_of(route)
        if access == "bearer":
            await check_bearer(client, route, RECIPES[(route.method, route.path)], world)
        elif access == "signed":
            await check_signed(client, route, world)
        elif access == "operator":
            await check_operator(client, route, world)
        elif access == "admin":
            await check_admin(client, route)
        elif access == "link":
            await check_link(client, route)
        else:
            await check_public(client, route, world)
        checked.append(f"{route.method} {route.path}")
    assert len(checked) == len(routes) and len(set(checked)) == len(checked)


async def check_bearer(client: httpx.AsyncClient, route: Route, recipe: Recipe, world: World) -> None:
    ids = {name: getattr(world, field_name) for name, field_name in recipe.params.items()}
    ghosts = {name: str(uuid.uuid4()) for name in ids}
    what = f"{route.method} {route.path}"

    async def call(
        headers: dict[str, str], query: dict[str, str] | None = None, params: dict[str, str] = ids
    ) -> httpx.Response:
        return await client.request(
            route.method,
            route.path.format(**params),
            json=body_of(recipe, world),
            headers=headers,
            params=query if query is not None else recipe.query,
        )

    def anonymous(answer: httpx.Response, params: dict[str, str]) -> str:
        text = answer.text
        for value in params.values():
            text = text.replace(value, "<id>")
        return text

    missing = "missing bearer API key" + (" (or ?token= stream token)" if route.path in TOKEN_ALSO else "")
    for headers, detail in (
        ({}, missing),
        (bearer("wrong-" + OWNER_KEY), "invalid API key"),
        ({"Authorization": f"Basic {OWNER_KEY}"}, missing),
    ):
        answer = await call(headers)
        assert answer.status_code == 401, f"{what} with {headers or 'no key'}: {answer.status_code} {answer.text}"
        assert answer.json()["detail"] == detail and answer.headers["www-authenticate"] == "Bearer", what
    if route.path in TOKEN_ALSO:
        answer = await call({}, {"token": "not-a-token"})
        assert answer.status_code == 401, f"{what} with a made-up token: {answer.status_code}"

    other = await call(bearer(OTHER_KEY))
    if recipe.shared:
        mine = await call(bearer(OWNER_KEY))
        assert other.status_code == mine.status_code == 200, f"{what}: {other.status_code}, {mine.status_code}"
        assert other.json() == mine.json(), f"{what} answers owners differently"
        return
    if recipe.params:
        assert other.status_code == 404, f"{what} as another owner: {other.status_code} {other.text}"
        # As if it did not exist: the same answer as for ids nobody has.
        ghost = await call(bearer(OWNER_KEY), params=ghosts)
        assert (ghost.status_code, anonymous(ghost, ghosts)) == (404, anonymous(other, ids)), what
    elif recipe.lists:
        assert other.status_code == 200, f"{what} as another owner: {other.status_code} {other.text}"
        assert getattr(world, recipe.lists) not in other.text, f"{what} shows another owner's {recipe.lists}"
    else:  # creating or validating: another owner may use the owner's workflow name
        expected_other = recipe.other or route.declared_status or 200
        assert other.status_code == expected_other, f"{what} as another owner: {other.text}"

    mine = await call(bearer(OWNER_KEY))
    expected = recipe.owner or route.declared_status or 200
    assert mine.status_code == expected, f"{what} as the owner: {mine.status_code} {mine.text}"
    if recipe.lists:
        assert getattr(world, recipe.lists) in mine.text, f"{what} does not show the owner's {recipe.lists}"


async def check_signed(client: httpx.AsyncClient, route: Route, world: World) -> None:
    path = route.path.format(hook_id=world.hook)
    body = b"{}"
    now = str(int(time.time()))
    good = {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(world.hook_secret, now, body)}
    for headers in (
        {},
        bearer(OWNER_KEY),
        {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign("wrong", now, body)},
        dict(good, **{SIGNATURE_HEADER: sign(world.hook_secret, now, b"{ }")}),
    ):
        answer = await client.post(path, content=body, headers=headers)
        assert answer.status_code == 401, f"{route.path} with {list(headers)}: {answer.status_code} {answer.text}"
    unknown = await client.post(route.path.format(hook_id=uuid.uuid4()), content=body, headers=good)
    assert unknown.status_code in (401, 404), unknown.text
    accepted = await client.post(path, content=body, headers=good)
    assert accepted.status_code == 202, accepted.text


async def check_operator(client: httpx.AsyncClient, route: Route, world: World) -> None:
    for headers in ({}, bearer(OWNER_KEY), bearer("wrong-" + METRICS_KEY)):
        answer = await client.get(route.path, headers=headers)
        assert answer.status_code == 401, f"{route.path} with {headers or 'no key'}: {answer.status_code}"
        assert world.name not in answer.text
    assert (await client.get(route.path, headers=bearer(METRICS_KEY))).status_code == 200


async def check_link(client: httpx.AsyncClient, route: Route) -> None:
    """No token: 422 naming it; a made-up or forged token: 401, with or without a bearer key."""
    decision = {"nonce": "n", "approved": True} if route.path.endswith("/decide") else {}
    missing = await client.post(route.path, json=decision, headers=bearer(OWNER_KEY))
    assert missing.status_code == 422 and "token" in missing.text, f"{route.path}: {missing.text}"
    forged = "eyJhIjoieCIsInUiOiJvd25lciIsImUiOjk5OTk5OTk5OTksIm4iOiJ4In0.bm90LWEtbWFj"
    for token, headers in (("not-a-link", {}), (forged, {}), (forged, bearer(OWNER_KEY))):
        answer = await client.post(route.path, json={**decision, "token": token}, headers=headers)
        assert answer.status_code == 401, f"{route.path} with {token[:10]}: {answer.status_code} {answer.text}"


async def check_admin(client: httpx.AsyncClient, route: Route) -> None:
    made = await client.post("/api/admin/keys", json={"owner": "matrix", "name": "m"}, headers=bearer(ADMIN_KEY))
    assert made.status_code == 201, made.text
    path = route.path.format(key_id=made.json()["id"])
    body = {"owner": "matrix", "name": "m"} if route.method == "POST" else None
    for headers in ({}, bearer(OWNER_KEY), bearer(made.json()["key"]), bearer("wrong-" + ADMIN_KEY)):
        answer = await client.request(route.method, path, json=body, headers=headers)
        assert answer.status_code == 401, (
            f"{route.method} {route.path} with {headers or 'no key'}: {answer.status_code}"
        )
        assert made.json()["key"] not in answer.text
    answer = await client.request(route.method, path, json=body, headers=bearer(ADMIN_KEY))
    assert answer.status_code == (route.declared_status or 200), answer.text


# Public pages that take ids: the page is the same shell for any id (it reads the run with the
# visitor's key), so a real id must show nothing of the run but the id the URL already has.
PUBLIC_PAGE_PARAMS = {"/ui/executions/{execution_id}": "execution"}


async def check_public(client: httpx.AsyncClient, route: Route, world: World) -> None:
    if (route.method, route.path) == ("*", "/ui/static"):  # the pages' scripts and styles
        assert (await client.get("/ui/static/ui.css")).status_code == 200
        for outside in ("/ui/static/../ui.py", "/ui/static/%2e%2e/settings.py", "/ui/static/missing.js"):
            assert (await client.get(outside)).status_code == 404, outside
        return
    if (route.method, route.path) == ("*", "/docs/static"):  # Swagger UI's and ReDoc's files (api/docs.py)
        assert (await client.get("/docs/static/swagger-ui-bundle.js")).status_code == 200
        for outside in ("/docs/static/../app.py", "/docs/static/%2e%2e/settings.py", "/docs/static/missing.js"):
            assert (await client.get(outside)).status_code == 404, outside
        return
    known = route.path in PUBLIC_PAGE_PARAMS
    if route.method != "GET" or ("{" in route.path and not known):
        raise AssertionError(
            f"{route.method} {route.path}: public routes are GET pages without parameters here; "
            "add a check for this one to tests/test_auth_matrix.py (PUBLIC_PAGE_PARAMS)"
        )
    in_path = getattr(world, PUBLIC_PAGE_PARAMS[route.path]) if known else None
    answer = await client.get(route.path.format(execution_id=in_path))
    assert answer.status_code < 500 and answer.status_code != 401, f"{route.path}: {answer.status_code}"
    for secret in (world.workflow, world.name, world.execution, OWNER_KEY, world.hook_secret):
        if secret != in_path:
            assert secret not in answer.text, f"{route.path} shows {secret!r} to anyone"
