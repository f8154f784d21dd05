"""Bearer API keys: each key belongs to an owner; workflows and runs are the owner's."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from api.errors import ApiError


def _bearer(request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def require_owner(request: Request) -> str:
    key = _bearer(request)
    owner = None
    # Compare against every key in constant time, so timing tells nothing about keys.
    for known, known_owner in request.app.state.key_owners.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            owner = known_owner
    if owner is None:
        raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


Owner = Annotated[str, Depends(require_owner)]


def require_metrics_key(request: Request, metrics_key: SecretStr | None, public: bool = False) -> None:
    """/metrics names every owner's workflows: with a metrics key set, only that key reads it
    (an owner's API key does not); without one it is closed unless the operator opened it
    (``FLOWMAESTRO_METRICS_PUBLIC=true``)."""
    if metrics_key is None:
        if public:
            return
        raise ApiError(
            403,
            "GET /metrics is closed: set FLOWMAESTRO_METRICS_KEY (and send it as a bearer key) "
            "or FLOWMAESTRO_METRICS_PUBLIC=true",
        )
    if not hmac.compare_digest(_bearer(request).encode(), metrics_key.get_secret_value().encode()):
        raise ApiError(401, "invalid metrics key", headers={"WWW-Authenticate": "Bearer"})
