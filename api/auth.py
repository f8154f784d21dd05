"""Bearer API keys: each key belongs to an owner; workflows and runs are the owner's."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from api.errors import ApiError
from store.api_keys import ApiKeys


def _bearer(request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def environment_owner(request: Request, key: str) -> str | None:
    """The owner of a key of ``FLOWMAESTRO_API_KEYS``, or None."""
    owner = None
    # Compare against every key in constant time, so timing tells nothing about keys.
    for known, known_owner in request.app.state.key_owners.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            owner = known_owner
    return owner


async def require_owner(request: Request) -> str:
    """The owner of the bearer key: one of the environment's, else one made through the API
    (``/api/admin/keys``, looked up by its hash, so a new key works at once and a revoked
    one stops at once)."""
    key = _bearer(request)
    owner = environment_owner(request, key)
    if owner is None and len(key) <= 200:
        api_keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
        owner = await api_keys.owner_of(key) if api_keys is not None else None
    if owner is None:
        raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


async def known_owner(request: Request, owner: str) -> bool:
    """Whether ``owner`` still has a key (the environment's, or an active one made through the API)."""
    if owner in request.app.state.key_owners.values():
        return True
    api_keys: ApiKeys | None = getattr(request.app.state, "api_keys", None)
    return api_keys is not None and await api_keys.has_owner(owner)


def require_admin(request: Request) -> None:
    """The admin key (``FLOWMAESTRO_ADMIN_KEY``) manages owners' keys; no owner's key does.
    Without one set, the routes are closed (403 saying how to open them)."""
    admin_key: SecretStr | None = request.app.state.admin_key
    if admin_key is None:
        raise ApiError(
            403, "the key management routes are closed: set FLOWMAESTRO_ADMIN_KEY and send it as a bearer key"
        )
    if not hmac.compare_digest(_bearer(request).encode(), admin_key.get_secret_value().encode()):
        raise ApiError(401, "invalid admin key", headers={"WWW-Authenticate": "Bearer"})


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
