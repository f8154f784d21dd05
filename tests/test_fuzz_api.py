"""A short fuzz of a real `flowmaestro serve` from its OpenAPI schema (tests/fuzzing.py): every
route, every credential, no 500, no traceback, no hang, answers that match their schema.
Then schemathesis's own run with every check it has (``--checks all``: status codes, content
types and headers as documented, ``Allow`` of a 405, valid data accepted, links followed
statefully) must find nothing. The long run is scripts/fuzz.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fuzzing import build_world, credentials_of, fuzz

pytestmark = pytest.mark.prefect

EXAMPLES = 10
SCHEMATHESIS_EXAMPLES = 5
"""Per operation and phase: about 600 requests, about a minute."""
REFUSED_BY_CONTENT = (
    "/api/workflows",
    "/api/workflows/{workflow_id}",
    "/api/workflows/{workflow_id}/execute",
    "/api/workflows/{workflow_id}/schedules",
    "/api/workflows/{workflow_id}/schedules/{schedule_id}",
    "/api/executions/{execution_id}/resume",
    "/api/executions/{execution_id}/retry",
    "/hooks/{hook_id}",
    "/api/credentials/{credential_id}",
    # Lists: a cursor is opaque, and one the API did not write (any other string) is a 422.
    "/api/executions",
    "/api/dead-letters",
    "/api/credentials",
    "/api/audit",
    "/api/executions/{execution_id}/nodes",
    # Versions and nodes the workflow does not have, bundles whose canvases do not compile,
    # budgets naming a workflow that is not the caller's.
    "/api/workflows/{workflow_id}/diff",
    "/api/workflows/{workflow_id}/rollback",
    "/api/workflows/import",
    "/api/workflows/{workflow_id}/nodes/{node_id}/test",
    "/api/executions/{execution_id}/rerun",
    "/api/budgets",
    "/api/budgets/{budget_id}",
)
"""Operations whose bodies the schema cannot fully describe: a canvas that does not compile,
run inputs that do not fit the workflow's own declaration, an approval input that does not fit
its form, a schedule less than 10 s apart, new values that are not the fields of the stored
credential's type, a version or node the workflow does not have. Schema-valid data may get their documented 422
there (``positive_data_acceptance`` is told so); everywhere else it must be accepted."""


def test_fuzz_every_route(served):
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"}, timeout=60) as api:
        ids = build_world(api)
    report = fuzz(served.base, credentials_of(served.owner_key, served.other_key), ids, examples=EXAMPLES, seed=0)
    print("\n" + report.table())
    assert len(report.routes) >= 27 and all(s.requests >= EXAMPLES // 2 for s in report.routes.values()), report.table()
    assert not report.failures, "\n".join(report.failures[:20])


def test_schemathesis_with_every_check_finds_nothing(served, tmp_path):
    config = tmp_path / "schemathesis.toml"
    paths = ", ".join(f'"{path}"' for path in REFUSED_BY_CONTENT)
    config.write_text(f"""
[[operations]]
include-path = [{paths}]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
""")
    command = [
        sys.executable,
        str(Path(__file__).with_name("run_schemathesis.py")),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{served.base}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--seed",
        "0",
        # Three operations at a time: most of the run is waiting on the API's answers (156 s
        # on one worker, 76 s on three, measured here).
        "--workers",
        "3",
        # A hang is tests/fuzzing.py's to find; here a slow answer is no error. Saving a
        # version updates its Prefect deployment (2 s at most on a quiet machine, measured
        # from a HAR of this run), which the other test process's load can stretch past 30 s.
        "--request-timeout",
        "120",
        "--suppress-health-check",
        "all",
        "--header",
        f"Authorization: Bearer {served.owner_key}",
    ]
    # In tmp_path: schemathesis keeps a cache (.schemathesis/) in its working directory.
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    # Errors (a request that got no answer) come before failures; the summary is last.
    starts = [done.stdout.find(f"=== {section} ===") for section in ("ERRORS", "FAILURES")]
    summary = done.stdout[min(s for s in starts if s >= 0) :] if max(starts) >= 0 else done.stdout[-3000:]
    print(done.stdout[-1500:])
    assert done.returncode == 0, summary[:12000] + done.stderr[-2000:]
