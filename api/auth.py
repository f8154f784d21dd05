"""Bearer API keys: each key belongs to an owner; workflows and runs are the owner's."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from api.errors import ApiError


def require_owner(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    owner = None
    # Compare against every key in constant time, so timing tells nothing about keys.
    for known, known_owner in request.app.state.key_owners.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            owner = known_owner
    if owner is None:
        raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


Owner = Annotated[str, Depends(require_owner)]
