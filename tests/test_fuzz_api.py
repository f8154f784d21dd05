"""A short fuzz of a real `flowmaestro serve` from its OpenAPI schema (tests/fuzzing.py): every
route, every credential, no 500, no traceback, no hang, answers that match their schema.
The long run is scripts/fuzz.py."""

from __future__ import annotations

import httpx
import pytest

from tests.fuzzing import build_world, credentials_of, fuzz

pytestmark = pytest.mark.prefect

EXAMPLES = 10


def test_fuzz_every_route(served):
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"},
                      timeout=60) as api:
        ids = build_world(api)
    report = fuzz(served.base, credentials_of(served.owner_key, served.other_key), ids, examples=EXAMPLES, seed=0)
    print("\n" + report.table())
    assert len(report.routes) >= 27 and all(s.requests >= EXAMPLES // 2 for s in report.routes.values()), report.table()
    assert not report.failures, "\n".join(report.failures[:20])
