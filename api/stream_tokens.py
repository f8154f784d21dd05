"""Stream tokens: what a browser's ``EventSource`` sends instead of a bearer key.

An ``EventSource`` cannot set an ``Authorization`` header, so a page asks
``POST /api/executions/{id}/stream-token`` (with its key) for a token and opens
``GET /api/executions/{id}/stream?token=...``. A token reads that one run's stream, as the
owner whose key asked for it, until it expires (10 minutes by default); no other route
takes it. It is ``v1.<payload>.<signature>``: the payload is base64url JSON
``{"x": execution_id, "o": owner, "exp": unix seconds}`` (readable by whoever holds the
token, so it says nothing secret), the signature HMAC-SHA256 of ``v1.<payload>`` under a
key only the API processes know. Nothing is stored: every API process that shares the key
accepts the tokens of the others.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import Depends, Query, Request

from api.auth import known_owner, require_owner
from api.errors import ApiError
from api.settings import ApiSettings
from node_handlers.redaction import REDACTED
from store.secrets import KEY_FILE, SecretBox

VERSION = "v1"
_LABEL = b"flowmaestro stream tokens v1"


def token_key(settings: ApiSettings) -> bytes:
    """``FLOWMAESTRO_STREAM_TOKEN_KEY`` when set; otherwise derived from the key that
    encrypts webhook secrets (``FLOWMAESTRO_SECRET_KEY`` or the key file under home), so
    API processes that can read each other's secrets also accept each other's tokens, and
    the derived key reveals nothing of that one."""
    if settings.stream_token_key is not None:
        material = settings.stream_token_key.get_secret_value().encode()
    else:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        SecretBox.from_settings(secret, settings.home)  # creates the key file on first use
        material = secret.encode() if secret else (settings.home / KEY_FILE).read_bytes().strip()
    return hmac.new(material, _LABEL, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class StreamGrant:
    execution_id: str
    owner: str
    expires_at: float


class StreamTokens:
    def __init__(self, key: bytes, ttl_s: float):
        self._key, self.ttl_s = key, ttl_s

    def _sign(self, signed: str) -> str:
        return _b64(hmac.new(self._key, signed.encode(), hashlib.sha256).digest())

    def issue(self, execution_id: str, owner: str, *, now: float | None = None) -> tuple[str, datetime]:
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        payload = _b64(json.dumps({"x": execution_id, "o": owner, "exp": expires}, separators=(",", ":")).encode())
        signed = f"{VERSION}.{payload}"
        return f"{signed}.{self._sign(signed)}", datetime.fromtimestamp(expires, UTC)

    def verify(self, token: str, execution_id: str, *, now: float | None = None) -> StreamGrant:
        """The grant of a token for ``execution_id``; 401 for a token this API did not sign
        or that expired, 403 for a valid token of another run."""
        version, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if (
            version != VERSION
            or not payload
            or not signature
            or not hmac.compare_digest(self._sign(f"{version}.{payload}"), signature)
        ):
            raise ApiError(401, "invalid stream token")
        try:
            claims = json.loads(_unb64(payload))
            grant = StreamGrant(str(claims["x"]), str(claims["o"]), float(claims["exp"]))
        except (ValueError, KeyError, TypeError):  # signed by us, so only an older format could do this
            raise ApiError(401, "invalid stream token") from None
        if grant.expires_at <= (now if now is not None else time.time()):
            expired = datetime.fromtimestamp(grant.expires_at, UTC).isoformat()
            raise ApiError(
                401,
                f"stream token expired at {expired}; ask POST "
                f"/api/executions/{execution_id}/stream-token for a new one",
            )
        if grant.execution_id != execution_id:
            raise ApiError(403, f"this stream token reads execution {grant.execution_id}, not {execution_id}")
        return grant


async def stream_reader(
    request: Request,
    execution_id: str,
    token: str | None = Query(
        None,
        max_length=2000,
        description=(
            "A stream token (POST /api/executions/{id}/stream-token), for clients that cannot "
            "send Authorization, such as a browser's EventSource."
        ),
    ),
) -> str:
    """The owner reading a run's stream: from the bearer key when there is one, otherwise
    from ``?token=``. A token whose owner has no key any more is refused (keys removed
    from ``FLOWMAESTRO_API_KEYS`` end their tokens too)."""
    if token is None or request.headers.get("authorization"):
        try:
            return await require_owner(request)
        except ApiError as exc:
            if token is None and exc.detail == "missing bearer API key":
                exc.detail = "missing bearer API key (or ?token= stream token)"
            raise
    grant = request.app.state.stream_tokens.verify(token, execution_id)
    if not await known_owner(request, grant.owner):
        raise ApiError(401, "the API key this stream token was issued for is no longer accepted")
    return grant.owner


StreamReader = Annotated[str, Depends(stream_reader)]


_SEPARATOR = r"(?:[?&;]|%3[bBfF]|%26)"
_EQUALS = r"(?:=|%3[dD])"
_URL_PARAMETER = re.compile(
    rf"(?P<lead>{_SEPARATOR}(?P<name>(?:[^=&;#\s%]|%(?!3[bBdDfF]|26)[0-9A-Fa-f]{{2}})*){_EQUALS})"
    rf"(?P<value>(?:[^&;#\s%]|%(?!3[bBfF]|26)[0-9A-Fa-f]{{2}})*)"
)
"""A parameter of a URL: after ``?``, ``&`` or ``;`` (query and matrix parameters alike),
the separators maybe percent-encoded as uvicorn writes a path (``stream%3Btoken%3D...``)."""


def redact_token_parameters(text: str) -> str:
    """``text`` with the value of every ``token`` parameter replaced, whatever its case or
    percent-encoding (``?%74oken=``, ``;TOKEN=``): a client may spell it so, and the
    spelling must not keep the token out of redaction."""

    def replace(match: re.Match[str]) -> str:
        return match["lead"] + REDACTED if unquote_plus(match["name"]).strip().lower() == "token" else match[0]

    return _URL_PARAMETER.sub(replace, text)


class RedactStreamTokens(logging.Filter):
    """Writes ``token=[redacted]`` in uvicorn's access log lines: a token in a URL would
    otherwise be in every log that keeps them, readable for its ten minutes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_token_parameters(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_access_logs() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactStreamTokens) for f in access.filters):
        access.addFilter(RedactStreamTokens())
