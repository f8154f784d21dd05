"""A short fuzz of a real `flowmaestro serve` from its OpenAPI schema (tests/fuzzing.py): every
route, every credential, no 500, no traceback, no hang, answers that match their schema.
The long run is scripts/fuzz.py."""

from __future__ import annotations

import httpx
import pytest

from tests.fuzzing import fuzz, world_ids
from tests.processes import wait_until
from tests.support import canvas, node

pytestmark = pytest.mark.prefect

EXAMPLES = 10


def test_fuzz_every_route(served):
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"},
                      timeout=60) as api:
        raw = canvas([node("start", "start"), node("end", "end", data={"output": "{{ inputs.who }}"})],
                     [("start", "end")], name="fuzzed", inputs={"who": {"type": "string"}})
        workflow_id = api.post("/api/workflows", json={"canvas": raw}).json()["id"]
        run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "x"}}).json()["execution_id"]
        ids = world_ids(api, workflow_id, run_id)
        # Ended, so its stream ends too: no request of the fuzz waits on a live run.
        wait_until(lambda: api.get(f"/api/executions/{run_id}").json()["status"] == "completed", timeout=120,
                   what="the fuzzed workflow's run completing")
    credentials = {"owner": {"Authorization": f"Bearer {served.owner_key}"}, "none": {},
                   "wrong": {"Authorization": "Bearer nope"},
                   "other": {"Authorization": f"Bearer {served.other_key}"}}
    report = fuzz(served.base, credentials, ids, examples=EXAMPLES, seed=0)
    print("\n" + report.table())
    assert len(report.routes) >= 27 and all(s.requests >= EXAMPLES // 2 for s in report.routes.values()), report.table()
    assert not report.failures, "\n".join(report.failures[:20])
