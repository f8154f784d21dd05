"""A short fingerprint of the settings that shape what a worker's runs do, so that workers
of one pool that would run the same workflow differently can be told apart.

Workers of a pool take any of its runs: a worker left running with an old egress allow
list, model URL or node secrets fails some runs of a pool whose other workers succeed,
and nothing says why. Each FlowMaestro worker puts this fingerprint in its Prefect worker
name (``<name> settings:<fingerprint>``, shown on the pool's Workers tab), and
``flowmaestro serve`` warns when the online workers of its pool show different ones.

The fingerprint is a hash: it tells settings apart without showing them (secrets are
among them). What is hashed: every ``FLOWMAESTRO_*`` variable except those only the API
reads and those that shape the worker process rather than its runs, and the provider keys
the handlers fall back on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from flows.child_environment import API_ONLY

PROCESS_ONLY = frozenset(
    {
        "FLOWMAESTRO_WORK_POOL",
        "FLOWMAESTRO_WORKER_LIMIT",
        "FLOWMAESTRO_WORKER_POLL_S",
        "FLOWMAESTRO_WORKER_GRACE_S",
        "FLOWMAESTRO_PUBLIC_URL",  # links in Prefect summaries, not what a run does
        "FLOWMAESTRO_WORKER_METRICS_PORT",  # each worker of serve has its own
        "FLOWMAESTRO_WORKER_METRICS_HOST",
    }
)
"""How the worker process runs, not what its runs do: workers may differ there."""
PROVIDER_KEYS = frozenset({"OPENAI_API_KEY", "ANTHROPIC_API_KEY"})
NAME_TAG = re.compile(r" settings:([0-9a-f]{8})$")


def settings_fingerprint(environ: Mapping[str, str]) -> str:
    """Eight hex digits of a hash of the run-shaping variables of ``environ``."""
    shaping = sorted(
        (name, value)
        for name, value in environ.items()
        if (name.startswith("FLOWMAESTRO_") and name not in API_ONLY and name not in PROCESS_ONLY)
        or name in PROVIDER_KEYS
    )
    digest = hashlib.sha256()
    for name, value in shaping:
        digest.update(f"{name}\0{value}\0".encode())
    return digest.hexdigest()[:8]


def tagged_name(name: str, fingerprint: str) -> str:
    """A worker name that carries the fingerprint."""
    return f"{NAME_TAG.sub('', name)} settings:{fingerprint}"


def fingerprint_of(worker_name: str) -> str | None:
    """The fingerprint a worker's name carries; None for a worker that does not say."""
    found = NAME_TAG.search(worker_name)
    return found.group(1) if found else None


def disagreement(worker_names: Iterable[str], expected: str) -> list[str]:
    """The workers (by name) whose fingerprint is not ``expected``, or that carry none."""
    return sorted(name for name in worker_names if fingerprint_of(name) != expected)
