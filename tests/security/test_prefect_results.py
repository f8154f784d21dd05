"""Issue 30, finding 1 (b, c, d and the Prefect-facing parts): code execution in our processes
through Prefect results.

The chain, as the penetration test ran it: (b) bob's transform makes an output over the event
limit shaped like a Prefect result record holding a base64 pickle, which was written verbatim
to Prefect's result storage at a predictable path; (c) anyone reaching Prefect forces one of
bob's runs Completed with ``storage_key`` pointing at that file and a pickle serializer; (d)
``GET /api/executions/{id}`` made the API call ``state.result()``, which unpickled it. Here the
pickle only touches a marker file: it must never appear. Also: no Prefect address is given
out unless the operator publishes one, and the embedded Prefect server refuses requests
without its auth string while serve's runs still complete with it.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from tests.processes import embedded_env, start_serve, wait_until
from tests.support import flow_run_of, forge_completed, new_flow_run, save_and_execute, wait_execution

SIZE = 300_000  # over FLOWMAESTRO_EVENT_OUTPUT_MAX_BYTES (256 kB): a large output


class TouchOnUnpickle:
    """Unpickled anywhere, it touches ``path`` (pathlib only: no test module needed there)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def payload(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(TouchOnUnpickle(marker))).decode()


def record_shaped(marker: Path) -> dict:
    """What a node outputs to look like a Prefect result record (``ResultRecord``) whose
    pickle touches ``marker``; the padding makes it a large output."""
    return {
        "metadata": {
            "storage_key": None,
            "expiration": None,
            "prefect_version": "3.9.1",
            "serializer": {"type": "pickle", "picklelib": "pickle"},
            "storage_block_id": None,
        },
        "result": payload(marker),
        "padding": "x" * SIZE,
    }


PICKLED = {"type": "pickle", "picklelib": "pickle"}
"""The serializer a forged state names: Prefect's reader would unpickle what it points at."""


def plant(path: Path, record: dict) -> None:
    """Put a file in result storage, as whoever can write there could."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


async def forged_completed_run(marker: Path):
    """(b) and (c) on Prefect alone: a pickle record that touches ``marker`` planted in the
    default result storage, and a new flow run forced Completed with its result there; the
    state Prefect now hands back for that run."""
    from prefect.results import aget_default_result_storage

    storage = await aget_default_result_storage()
    key = f"present-{uuid.uuid4().hex}"
    plant(Path(storage.basepath) / key, record_shaped(marker))
    run_id = await new_flow_run()
    return await forge_completed(run_id, key, PICKLED)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.prefect
async def test_plant_forge_read_runs_no_code_in_the_api(served, tmp_path):
    marker = tmp_path / "api-unpickled"
    bob = {"Authorization": f"Bearer {served.owner_key}"}
    results_root = served.home / "results"  # PREFECT_LOCAL_STORAGE_PATH of serve and its worker
    async with httpx.AsyncClient(base_url=served.base, headers=bob, timeout=60) as api:
        # (b) plant: a transform whose large output is shaped like a result record.
        planted = {
            "name": f"plant-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "start", "type": "start", "data": {}},
                {"id": "big", "type": "transform", "data": {"output": record_shaped(marker)}},
            ],
            "edges": [{"id": "a", "source": "start", "target": "big"}],
        }
        workflow = (await api.post("/api/workflows", json={"canvas": planted})).json()["id"]
        plant_run = (await api.post(f"/api/workflows/{workflow}/execute", json={})).json()["execution_id"]
        result = await wait_for(api, plant_run, ("completed", "failed"))
        assert result["status"] == "completed", result
        shown = result["nodes"]["big"]["output"]
        assert shown["truncated"] is True and shown["ref"], shown
        whole = await api.get(f"/api/executions/{plant_run}/outputs/{shown['ref']}")  # the feature stays
        assert whole.status_code == 200 and whole.json()["result"] == payload(marker)
        old_place = results_root / "flowmaestro-outputs" / plant_run / f"{shown['ref']}.json"  # before the fix

        # (c) forge: one of bob's paused runs set Completed, its result "at" the planted output's
        # old place; and another at a pickle record that is there (put by whoever can write there).
        paused = [await start_paused(api) for _ in range(2)]
        results_root.mkdir(parents=True, exist_ok=True)
        present, present_marker = results_root / f"present-{uuid.uuid4().hex}", tmp_path / "api-unpickled-present"
        present.write_text(json.dumps(record_shaped(present_marker)))
        flow_runs = [await flow_run_of(api, run_id) for run_id in paused]  # what Prefect knows them by
        await forge_completed(flow_runs[0], str(old_place), PICKLED)
        await forge_completed(flow_runs[1], str(present), PICKLED)  # live: see test_prefects_own_reader_would_run...
        # (d) read: the API answers from its store and the event log, and runs no code.
        for run_id in paused:
            answer = await api.get(f"/api/executions/{run_id}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "completed"  # Prefect's word on the status, nothing more
            assert payload(marker) not in answer.text
        assert not marker.exists(), "the API unpickled the planted output through a forged result"
        assert not present_marker.exists(), "the API unpickled a forged result"
        # Nothing of the planted output where Prefect reads results: no file there holds it.
        holding = [p for p in files_under(results_root) if payload(marker).encode() in p.read_bytes()]
        assert holding == [] and not old_place.exists(), f"the planted output is in Prefect's result storage: {holding}"


@pytest.mark.prefect
async def test_prefects_own_reader_would_run_the_forged_pickle(prefect_server, tmp_path):
    """The forgery the test above makes is the real thing: ``State.result()`` runs it."""
    marker = tmp_path / "unpickled"
    forged = await forged_completed_run(marker)
    await forged.result(raise_on_failure=False)
    assert marker.exists()


@pytest.mark.prefect
async def test_a_sub_workflow_parent_and_the_cli_refuse_a_forged_result(prefect_server, tmp_path, monkeypatch):
    """The parent of a sub-workflow and ``flowmaestro run`` read the state their child / run
    ended in: a forged one (as Prefect could hand back) is refused, its pickle never loaded."""
    import flows.flow
    from cli.progress import run_with_progress
    from flows.subworkflows import PrefectSubworkflows
    from node_handlers.base import NodeError

    marker = tmp_path / "unpickled"
    forged = await forged_completed_run(marker)

    async def child_flow(**_: object):
        return forged

    class Config:
        workflow, version, inputs = "child", None, {}

    class Record:
        id = "parent"

    class Execution:
        record = Record()

    subworkflows = PrefectSubworkflows(lambda *_: _canvas(), child_flow, "bob")
    with pytest.raises(NodeError, match="refused"):
        await subworkflows.run(Execution(), None, Config())

    class Bound:
        async def __call__(self, **_: object):
            return forged

    monkeypatch.setattr(flows.flow, "workflow_flow", lambda context: Bound())
    from rich.console import Console

    result = await run_with_progress({}, {}, "http://prefect.invalid", quiet=True, console=Console(file=io.StringIO()))
    assert result["status"] == "failed" and "refused" in result["error"]["message"]
    assert not marker.exists()


async def _canvas() -> dict:
    return {}


@pytest.mark.prefect
async def test_no_prefect_address_is_given_out_unless_a_public_one_is_configured(served, prefect_server):
    from api.app import create_app
    from api.settings import ApiSettings

    prefect_host = prefect_server.api_url.removesuffix("/api")
    bob = {"Authorization": f"Bearer {served.owner_key}"}
    async with httpx.AsyncClient(base_url=served.base, headers=bob, timeout=60) as api:
        hello = {
            "name": f"hello-{uuid.uuid4().hex[:6]}",
            "nodes": [{"id": "start", "type": "start", "data": {}}],
            "edges": [],
        }
        workflow = (await api.post("/api/workflows", json={"canvas": hello})).json()["id"]
        started = await api.post(f"/api/workflows/{workflow}/execute", json={})
        assert started.status_code == 202 and set(started.json()["links"]) == {"self", "stream"}
        assert prefect_host not in started.text and ":" + prefect_host.rsplit(":", 1)[1] not in started.text
        shell = await api.get("/ui/", headers={})
        assert shell.status_code == 200 and prefect_host not in shell.text
        assert '<meta name="flowmaestro-prefect-ui" content="">' in shell.text

    public = "https://prefect.example.org"
    settings = ApiSettings(
        api_keys="bob:bob-key",
        prefect_public_url=public,
        database_url=f"sqlite+aiosqlite:///{served.home / f'public-{uuid.uuid4().hex}.db'}",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": "Bearer bob-key"}
        ) as api:
            assert f'content="{public}"' in (await api.get("/ui/")).text
            workflow = (await api.post("/api/workflows", json={"canvas": hello})).json()["id"]
            started = (await api.post(f"/api/workflows/{workflow}/execute", json={})).json()
            # Answered before its flow run exists: the Prefect page is linked once it does.
            assert "prefect_ui" not in started["links"]
            flow_run_id = await flow_run_of(api, started["execution_id"])
            links = app.state.runs.links(started["execution_id"], flow_run_id)
            assert links["prefect_ui"] == f"{public}/runs/flow-run/{flow_run_id}"
            await api.post(f"/api/executions/{started['execution_id']}/cancel")


@pytest.mark.prefect
@pytest.mark.workers
def test_the_embedded_prefect_server_refuses_requests_without_its_auth_string(tmp_path):
    """``flowmaestro serve`` with no PREFECT_API_URL starts the embedded server with auth on:
    requests without the auth string get 401, other origins no CORS grant, and runs still
    complete on serve's worker (which presents it)."""
    from flows.local_server import stop

    home = tmp_path / "home"
    key = "key-" + uuid.uuid4().hex
    env = embedded_env(home, key) | {"FLOWMAESTRO_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'store.db'}"}
    home.mkdir()
    serve, base = start_serve(tmp_path, env, timeout=600)
    try:
        auth_file = home / "prefect-auth"
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        secret = auth_file.read_text().strip()
        api_url = json.loads((home / "prefect-server.json").read_text())["api_url"]
        assert secret not in (home / "prefect-server.json").read_text()

        with httpx.Client(timeout=60) as prefect:
            body = {"limit": 1}
            assert prefect.post(f"{api_url}/flow_runs/filter", json=body).status_code == 401
            assert (
                prefect.post(f"{api_url}/flow_runs/filter", json=body, auth=("flowmaestro", "wrong")).status_code == 401
            )
            user, password = secret.split(":", 1)
            assert prefect.post(f"{api_url}/flow_runs/filter", json=body, auth=(user, password)).status_code == 200
            preflight = prefect.options(
                f"{api_url}/flow_runs/filter",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.headers.get("access-control-allow-origin") not in ("*", "https://evil.example")

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
            hello = {
                "name": "hello",
                "nodes": [
                    {"id": "start", "type": "start", "data": {}},
                    {"id": "greet", "type": "transform", "data": {"output": "hi"}},
                ],
                "edges": [{"id": "a", "source": "start", "target": "greet"}],
            }
            workflow = api.post("/api/workflows", json={"canvas": hello}).json()["id"]
            started = api.post(f"/api/workflows/{workflow}/execute", json={})
            assert started.status_code == 202 and api_url.removesuffix("/api") not in started.text
            run_id = started.json()["execution_id"]

            def ended() -> dict | None:
                body = api.get(f"/api/executions/{run_id}").json()
                return body if body["status"] in ("completed", "failed", "cancelled") else None

            result = wait_until(ended, timeout=300, interval=0.5, what="the run ending on serve's worker")
            assert result["status"] == "completed" and result["output"] == {"greet": "hi"}, result
            assert secret.split(":", 1)[1] not in json.dumps(result)
        serve.stop(60)
        assert secret.split(":", 1)[1] not in serve.output(tail=10_000_000)
    finally:
        serve.stop(60)
        stop(home)  # the embedded server this serve started (its pid is in the home's state file)


# --- helpers -------------------------------------------------------------------------------------


async def wait_for(api: httpx.AsyncClient, run_id: str, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    return await wait_execution(
        api, run_id, lambda body: body.get("status") in statuses, timeout=timeout, what=" or ".join(statuses)
    )


async def start_paused(api: httpx.AsyncClient) -> str:
    """A run of bob's waiting on an approval."""
    raw = {
        "name": f"ask-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "ask", "type": "approval", "data": {"message": "Ship?"}},
        ],
        "edges": [{"id": "a", "source": "start", "target": "ask"}],
    }
    run_id = await save_and_execute(api, raw, deployed=False)
    await wait_for(api, run_id, ("paused",))
    return run_id
