"""Fuzzing the running API from its own OpenAPI schema (schemathesis + hypothesis), shared by
the fast test (tests/test_fuzz_api.py) and the long run (scripts/fuzz.py).

Every operation of the schema gets ``examples`` requests: valid and invalid parameters and
bodies as schemathesis generates them, each with the owner's key half of the time, else no
key, a wrong one or another owner's, and, half of the time, path ids of real objects of the
owner (a saved workflow, a completed run, a schedule, a webhook) so the requests get past
the 404 into the route's logic. Deletions run last, so the real objects live as long as
possible.

An answer is a failure when it is a 5xx (a 503 is allowed only with ``service`` and
Retry-After), carries a traceback, is a 4xx without the error body ``{"detail", "issues"}``,
does not match the declared response schema, or does not come within ``TIMEOUT_S``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance

TIMEOUT_S = 30.0
"""An answer slower than this is a hang (the API bounds Prefect at 20 s, queries at 10 s)."""


@dataclass
class RouteStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Report:
    routes: dict[str, RouteStats] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return [f"{route}: {failure}" for route, stats in self.routes.items() for failure in stats.failures]

    def table(self) -> str:
        lines = [f"{'route':<62} {'requests':>8}  statuses", "-" * 100]
        for route, stats in sorted(self.routes.items()):
            statuses = " ".join(f"{code}x{n}" for code, n in sorted(stats.statuses.items()))
            lines.append(f"{route:<62} {stats.requests:>8}  {statuses}")
        total = sum(s.requests for s in self.routes.values())
        lines.append(
            f"{len(self.routes)} routes, {total} requests, {len(self.failures)} failures, {self.seconds:.0f} s"
        )
        return "\n".join(lines)


def _problems(response: requests.Response, elapsed: float) -> list[str]:
    found = []
    text = response.text if "text/event-stream" not in response.headers.get("content-type", "") else ""
    if elapsed > TIMEOUT_S:
        found.append(f"answered after {elapsed:.1f} s")
    if "Traceback (most recent call last)" in response.text or 'File "/' in response.text:
        found.append(f"traceback in the body: {text[:200]}")
    if response.status_code >= 500:
        body = _json(response)
        if not (
            response.status_code == 503
            and isinstance(body, dict)
            and body.get("service")
            and response.headers.get("retry-after")
        ):
            found.append(f"{response.status_code}: {text[:300]}")
    elif response.status_code >= 400:
        body = _json(response)
        if not (
            isinstance(body, dict) and isinstance(body.get("detail"), str) and isinstance(body.get("issues"), list)
        ):
            found.append(f"{response.status_code} without the error body: {text[:200]}")
    return found


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def fuzz(
    base_url: str,
    credentials: dict[str, dict[str, str]],
    real_ids: dict[str, str],
    *,
    examples: int,
    seed: int | None = None,
) -> Report:
    """Fuzz every operation of the API at ``base_url`` (its /openapi.json). ``credentials``:
    headers by name, the owner's first; ``real_ids``: path parameter name -> an id of the owner's."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper() == "DELETE", op.path))
    report = Report()
    session = requests.Session()
    started = time.monotonic()
    for operation in operations:
        stats = report.routes.setdefault(f"{operation.method.upper()} {operation.path}", RouteStats())
        _fuzz_operation(operation, stats, session, base_url, credentials, real_ids, examples, seed)
    report.seconds = time.monotonic() - started
    return report


def _fuzz_operation(
    operation: Any,
    stats: RouteStats,
    session: requests.Session,
    base_url: str,
    credentials: dict[str, dict[str, str]],
    real_ids: dict[str, str],
    examples: int,
    seed: int | None,
) -> None:
    # The owner's key half of the time (the others stop at the 401); valid and invalid requests.
    owner, *others = credentials
    who_strategy = st.one_of(st.just(owner), st.sampled_from(others))
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @hypothesis.given(case=cases, who=who_strategy, real=st.booleans())
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def one(case: Any, who: str, real: bool) -> None:
        if real and case.path_parameters:
            case.path_parameters = {k: real_ids.get(k, v) for k, v in case.path_parameters.items()}
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        headers.update(credentials[who])
        started = time.monotonic()
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            stats.requests += 1
            stats.failures.append(f"no answer within {TIMEOUT_S} s ({type(exc).__name__}): {case.as_curl_command()}")
            return
        elapsed = time.monotonic() - started
        stats.requests += 1
        stats.statuses[response.status_code] += 1
        problems = _problems(response, elapsed)
        if response.status_code < 300:
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a group of the failed checks
                problems.append(f"answer does not match its schema: {str(exc)[:300]}")
        for problem in problems:
            stats.failures.append(f"{problem}\n    {case.as_curl_command(headers=headers)}")

    one()


def build_world(api: Any) -> dict[str, str]:
    """The owner's objects the fuzz uses as path ids (``api``: an httpx client with the owner's
    key): a workflow, a completed run of it (its stream ends: no request waits on a live run),
    a schedule, a webhook."""
    from tests.processes import wait_until

    raw = {
        "name": "fuzzed",
        "inputs": {"who": {"type": "string"}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "end", "type": "end", "data": {"output": "{{ inputs.who }}"}},
        ],
        "edges": [{"id": "e", "source": "start", "target": "end"}],
    }
    workflow_id = api.post("/api/workflows", json={"canvas": raw}).json()["id"]
    run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "x"}}).json()["execution_id"]
    schedule = api.post(f"/api/workflows/{workflow_id}/schedules", json={"interval_s": 3600, "active": False})
    hook = api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "fuzz"})
    assert schedule.status_code == hook.status_code == 201, (schedule.text, hook.text)
    wait_until(
        lambda: api.get(f"/api/executions/{run_id}").json()["status"] == "completed",
        timeout=120,
        what="the fuzzed workflow's run completing",
    )
    return {
        "workflow_id": workflow_id,
        "execution_id": run_id,
        "schedule_id": schedule.json()["id"],
        "hook_id": hook.json()["id"],
        "dead_letter_id": str(uuid.uuid4()),
    }


def credentials_of(owner_key: str, other_key: str) -> dict[str, dict[str, str]]:
    """The four credentials, the owner's first."""
    return {
        "owner": {"Authorization": f"Bearer {owner_key}"},
        "none": {},
        "wrong": {"Authorization": "Bearer nope"},
        "other": {"Authorization": f"Bearer {other_key}"},
    }
