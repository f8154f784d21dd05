"""Stored credentials as nodes use them: ``data.credential: "<name>"``.

The canvas holds only the name. The handler reads the values when the node executes,
through the credential reader of its ``HandlerServices`` (a worker's: FlowMaestro's store),
in the run owner's namespace and nowhere else, so they are never in a template's reach,
in the resolved configuration (which the journal, dead letters, events and Prefect see), or
in any answer of the API. Each execution reads them again: a rotated credential is used by
the next execution, a deleted one fails it, saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Protocol

from pydantic import Field

from node_handlers.base import NodeError
from node_handlers.services import HandlerServices
from store.credentials import CREDENTIAL_NAME_PATTERN, CredentialValue
from store.errors import NotFound, Unavailable

CredentialName = Annotated[
    str,
    Field(
        pattern=CREDENTIAL_NAME_PATTERN,
        description="Name of a credential the run's owner stored (POST /api/credentials); its values "
        "are read when the node runs, never written in the canvas.",
    ),
]


class CredentialReader(Protocol):
    """Reads a stored credential (``store.credentials.Credentials``)."""

    async def read(self, owner: str, name: str) -> CredentialValue:
        """The credential with its values; ``store.errors.NotFound`` when the owner has none
        of that name, ``ValueError`` when no key of the ring opens it."""
        ...

    async def names(self, owner: str) -> set[str]:
        """The names of the owner's credentials."""
        ...


def named_credentials(canvas: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(node id, credential name)`` of every node of ``canvas`` naming a stored credential
    (``data.credential``), in canvas order."""
    named = []
    for raw in canvas.get("nodes") or []:
        data = raw.get("data") if isinstance(raw, Mapping) else None
        if isinstance(data, Mapping) and isinstance(data.get("credential"), str):
            named.append((str(raw.get("id")), data["credential"]))
    return named


async def missing_credentials(
    reader: CredentialReader, owner: str, canvas: Mapping[str, Any], severity: str = "error"
) -> list[dict[str, Any]]:
    """An issue per node of ``canvas`` naming a credential ``owner`` has not stored."""
    named = named_credentials(canvas)
    if not named:
        return []
    stored = await reader.names(owner)
    return [
        {
            "code": "missing_credential",
            "severity": severity,
            "node_id": node_id,
            "field": "data.credential",
            "message": f"node {node_id!r} names credential {name!r}, which its owner has not stored "
            "(POST /api/credentials)",
        }
        for node_id, name in named
        if name not in stored
    ]


async def read_credential(
    services: HandlerServices, owner: str | None, name: str, types: tuple[str, ...]
) -> CredentialValue:
    """The credential ``name`` of ``owner``, of one of ``types``; ``NodeError`` naming it otherwise."""
    reader = services.credentials
    if reader is None:
        raise NodeError(
            f"credential {name!r}: stored credentials are read by the workers of saved workflows; "
            "this run has no credential store",
            error_type="MissingCredential",
            details={"credential": name},
        )
    if owner is None:
        raise NodeError(
            f"credential {name!r}: a run without an owner cannot use stored credentials",
            error_type="MissingCredential",
            details={"credential": name},
        )
    try:
        credential = await reader.read(owner, name)
    except NotFound:
        raise NodeError(
            f"credential {name!r} does not exist for owner {owner!r} (deleted, or never stored: POST /api/credentials)",
            error_type="MissingCredential",
            details={"credential": name},
        ) from None
    except Unavailable as exc:
        raise NodeError(
            f"credential {name!r} cannot be read now: {exc.message}",
            retry_class="connection",
            error_type="CredentialUnavailable",
            details={"credential": name},
        ) from None
    except ValueError:
        raise NodeError(
            f"credential {name!r} cannot be decrypted with this worker's key ring (FLOWMAESTRO_CREDENTIALS_KEY "
            "must be derived from the API's FLOWMAESTRO_SECRET_KEY: 'flowmaestro secrets worker-key')",
            error_type="CredentialUnreadable",
            details={"credential": name},
        ) from None
    if credential.type not in types:
        raise NodeError(
            f"credential {name!r} is of type {credential.type}; this node takes {' or '.join(types)}",
            error_type="WrongCredentialType",
            details={"credential": name, "type": credential.type},
        )
    return credential
