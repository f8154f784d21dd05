"""The environment each process FlowMaestro starts gets: only what it needs.

A child inherits its parent's environment by default, and ``flowmaestro serve``'s holds the
API's keys. The Prefect server reads none of FlowMaestro's settings and no credential of
ours; workers run nodes (they need the node secrets, provider keys, store and event log
settings) but never answer API requests, so they need neither the API keys nor the keys
that sign or encrypt what the API hands out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

API_ONLY = frozenset(
    {
        "FLOWMAESTRO_API_KEYS",  # the bearer keys of every owner
        "FLOWMAESTRO_API_KEY",  # a client's key (flowmaestro schedules ...)
        "FLOWMAESTRO_API_KEY_FILE",
        "FLOWMAESTRO_METRICS_KEY",
        "FLOWMAESTRO_SECRET_KEY",  # encrypts webhook secrets: the API's alone
        "FLOWMAESTRO_STREAM_TOKEN_KEY",
        "PREFECT_SERVER_API_AUTH_STRING",  # the Prefect server's; clients use PREFECT_API_AUTH_STRING
    }
)
"""Read by the API (or a client), never by a worker."""

CREDENTIAL_NAME = re.compile(
    r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH_STRING)(_|$)", re.IGNORECASE
)


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: the parent's without what only the API reads."""
    return {name: value for name, value in environ.items() if name.upper() not in API_ONLY}


def prefect_server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The Prefect server's environment: the parent's without FlowMaestro's settings and any
    credential-looking variable (provider keys, node secrets), Prefect's own settings kept."""
    return {
        name: value
        for name, value in environ.items()
        if name.upper().startswith("PREFECT_")
        or not (name.upper().startswith("FLOWMAESTRO_") or CREDENTIAL_NAME.search(name))
    }
