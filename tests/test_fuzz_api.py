"""A short fuzz of a real `flowmaestro serve` from its OpenAPI schema (tests/fuzzing.py): every
route, every credential, no 500, no traceback, no hang, answers that match their schema.
The long run is scripts/fuzz.py."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fuzzing import fuzz, world_ids
from tests.processes import stack_env, start_serve, wait_until
from tests.support import canvas, node

pytestmark = pytest.mark.prefect

OWNER, OTHER = "fuzz-owner-" + uuid.uuid4().hex, "fuzz-other-" + uuid.uuid4().hex
EXAMPLES = 10


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    home = tmp_path_factory.mktemp("fuzz")
    env = stack_env(home, prefect_server, f"sqlite+aiosqlite:///{home / 'fuzz.db'}", OWNER,
                    FLOWMAESTRO_API_KEYS=f"owner:{OWNER},other:{OTHER}",
                    FLOWMAESTRO_WORK_POOL=f"fuzz-{uuid.uuid4().hex[:6]}", FLOWMAESTRO_WORKER_GRACE_S="2")
    serve, base = start_serve(home, env, workers=1)
    try:
        yield base
    finally:
        serve.stop()


def test_fuzz_every_route(served):
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {OWNER}"}, timeout=60) as api:
        raw = canvas([node("start", "start"), node("end", "end", data={"output": "{{ inputs.who }}"})],
                     [("start", "end")], name="fuzzed", inputs={"who": {"type": "string"}})
        workflow_id = api.post("/api/workflows", json={"canvas": raw}).json()["id"]
        run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "x"}}).json()["execution_id"]
        ids = world_ids(api, workflow_id, run_id)
        # Ended, so its stream ends too: no request of the fuzz waits on a live run.
        wait_until(lambda: api.get(f"/api/executions/{run_id}").json()["status"] == "completed", timeout=120,
                   what="the fuzzed workflow's run completing")
    credentials = {"owner": {"Authorization": f"Bearer {OWNER}"}, "none": {},
                   "wrong": {"Authorization": "Bearer nope"}, "other": {"Authorization": f"Bearer {OTHER}"}}
    report = fuzz(served, credentials, ids, examples=EXAMPLES, seed=0)
    print("\n" + report.table())
    assert len(report.routes) >= 27 and all(s.requests >= EXAMPLES // 2 for s in report.routes.values()), report.table()
    assert not report.failures, "\n".join(report.failures[:20])
