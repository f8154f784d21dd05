"""How a webhook checks who sent a request, and how the request becomes run inputs.

A hook has one verification scheme, each the sender's own documented algorithm:

* ``flowmaestro``: ours (``api.signing``), over ``<timestamp>.<body>``;
* ``github``: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body; no timestamp
  is signed, so GitHub's ``X-GitHub-Delivery`` id stands in for an ``Idempotency-Key``;
* ``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]``, HMAC-SHA256 of
  ``<t>.<body>``, refused when ``t`` is older than the tolerance (at most 300 s);
* ``slack``: ``X-Slack-Signature: v0=<hex>``, HMAC-SHA256 of ``v0:<timestamp>:<body>``
  with ``X-Slack-Request-Timestamp``, refused past 300 s (Slack's own advice);
* ``hmac``: any other sender: an HMAC of the body in a header of the hook's choosing
  (name, algorithm, hex or base64, an optional prefix such as ``sha256=``).

Every comparison is constant-time. Whatever the scheme, the intake also refuses a second
copy of an accepted signature while it is remembered (``api.replay_guard``): schemes that
sign a timestamp cannot be replayed later either; the others can be after that window, so
their senders' delivery ids (``idempotency_header``) are the defence, for 24 h.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from api.signing import FUTURE_SKEW_S, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE_S, BadSignature
from api.signing import verify as verify_ours

Scheme = Literal["flowmaestro", "github", "stripe", "slack", "hmac"]
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
"""An HTTP header name (RFC 9110 token)."""
DEFAULT_IDEMPOTENCY_HEADER: dict[str, str] = {"github": "X-GitHub-Delivery"}
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
HeaderName = Annotated[str, StringConstraints(pattern=HEADER_NAME)]


class _Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    idempotency_header: str | None = Field(
        None,
        pattern=HEADER_NAME,
        description="A header carrying the sender's delivery id, used as the Idempotency-Key "
        "when none is sent (github: X-GitHub-Delivery by default).",
    )


class OursScheme(_Scheme):
    scheme: Literal["flowmaestro"]


class GithubScheme(_Scheme):
    scheme: Literal["github"]


class StripeScheme(_Scheme):
    scheme: Literal["stripe"]
    tolerance_s: int = Field(TOLERANCE_S, ge=1, le=TOLERANCE_S, description="How old its signed timestamp may be.")


class SlackScheme(_Scheme):
    scheme: Literal["slack"]


class HmacScheme(_Scheme):
    scheme: Literal["hmac"]
    header: str = Field(pattern=HEADER_NAME, description="The header holding the signature.")
    algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field("", max_length=32, description="Text before the digest in the header, e.g. 'sha256='.")


Verification = Annotated[
    OursScheme | GithubScheme | StripeScheme | SlackScheme | HmacScheme, Field(discriminator="scheme")
]
"""How a hook checks a request's signature (docs/triggers.md#verification-schemes)."""
VERIFICATION: TypeAdapter[OursScheme | GithubScheme | StripeScheme | SlackScheme | HmacScheme] = TypeAdapter(
    Verification
)
OURS = OursScheme(scheme="flowmaestro")


def stored_verification(
    stored: Mapping[str, Any] | None,
) -> OursScheme | GithubScheme | StripeScheme | SlackScheme | HmacScheme:
    """A hook's scheme as stored (None: ours, the hooks made before schemes existed)."""
    return OURS if not stored else VERIFICATION.validate_python(dict(stored))


def delivery_id_header(verification: _Scheme) -> str | None:
    scheme = getattr(verification, "scheme", "")
    return verification.idempotency_header or DEFAULT_IDEMPOTENCY_HEADER.get(scheme)


class InputMapping(BaseModel):
    """How a request becomes the run's inputs. Unset (``null``): the body is a JSON object
    of the inputs. ``body`` names one input that receives the whole body (JSON when it
    parses, form fields as an object, else the text); ``headers`` and ``query`` map input
    names to request headers and query parameters (absent ones are left out; a header's
    value replaces a key of the body of the same name, a parameter's either)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"body": "payload", "headers": {"event": "X-GitHub-Event"}, "query": {"source": "src"}}]
        },
    )
    body: str | None = Field(None, min_length=1, max_length=200)
    headers: dict[Name, HeaderName] = Field(default_factory=dict, max_length=50)
    query: dict[Name, Name] = Field(default_factory=dict, max_length=50)


@dataclass(frozen=True)
class Verified:
    signature: str
    """What the replay guard remembers: the signature, with its timestamp when signed."""
    delivery_id: str | None = None
    """The sender's delivery id (``idempotency_header``), when it sent one."""


def verify_request(
    verification: OursScheme | GithubScheme | StripeScheme | SlackScheme | HmacScheme,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> Verified:
    """Check a request against its hook's scheme; raises ``BadSignature`` saying why.
    ``headers``: case-insensitive (Starlette's), or lower-case keys."""

    def header(name: str) -> str | None:
        value = headers.get(name.lower())
        return value if value is not None else headers.get(name)

    scheme = verification.scheme
    delivery_header = delivery_id_header(verification)
    delivery_id = header(delivery_header) if delivery_header else None
    if scheme == "flowmaestro":
        signature = header(SIGNATURE_HEADER)
        verify_ours(secret, header(TIMESTAMP_HEADER), signature, body, now)
        assert signature is not None
        return Verified(signature.strip(), delivery_id)
    if scheme == "github":
        signature = _required(header("X-Hub-Signature-256"), "X-Hub-Signature-256")
        _compare("sha256=" + _hmac(secret, body, "sha256").hex(), signature, "X-Hub-Signature-256", "the body")
        return Verified(signature.strip(), delivery_id)
    if isinstance(verification, StripeScheme):
        return Verified(_stripe(secret, header("Stripe-Signature"), body, now, verification.tolerance_s), delivery_id)
    if scheme == "slack":
        timestamp = _required(header("X-Slack-Request-Timestamp"), "X-Slack-Request-Timestamp")
        _check_time(timestamp, now, TOLERANCE_S, "X-Slack-Request-Timestamp")
        signature = _required(header("X-Slack-Signature"), "X-Slack-Signature")
        expected = "v0=" + _hmac(secret, b"v0:" + timestamp.strip().encode() + b":" + body, "sha256").hex()
        _compare(expected, signature, "X-Slack-Signature", "the body and timestamp")
        return Verified(f"{timestamp.strip()}:{signature.strip()}", delivery_id)
    assert isinstance(verification, HmacScheme)
    signature = _required(header(verification.header), verification.header)
    digest = _hmac(secret, body, verification.algorithm)
    encoded = digest.hex() if verification.encoding == "hex" else base64.b64encode(digest).decode()
    _compare(verification.prefix + encoded, signature, verification.header, "the body")
    return Verified(signature.strip(), delivery_id)


def _hmac(secret: str, message: bytes, algorithm: str) -> bytes:
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()


def _required(value: str | None, name: str) -> str:
    if not value or not value.strip():
        raise BadSignature(f"missing {name} header")
    return value


def _compare(expected: str, given: str, header: str, what: str) -> None:
    # Constant time: how long the comparison takes tells nothing of the expected value.
    if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "replace")):
        raise BadSignature(f"{header} does not match {what}")


def _check_time(timestamp: str, now: float, tolerance_s: int, name: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", timestamp.strip()):
        raise BadSignature(f"{name} must be unix seconds")
    moment = int(timestamp)
    if now - moment > tolerance_s:
        raise BadSignature(f"{name} is more than {tolerance_s} s old")
    if moment - now > FUTURE_SKEW_S:
        raise BadSignature(f"{name} is more than {FUTURE_SKEW_S} s ahead of the server's time")
    return moment


def _stripe(secret: str, header: str | None, body: bytes, now: float, tolerance_s: int) -> str:
    """Stripe's scheme: every ``v1`` of the header is tried (several while Stripe rolls a
    secret); ``v0`` and unknown keys are ignored, as Stripe's libraries do."""
    value = _required(header, "Stripe-Signature")
    pairs = [part.split("=", 1) for part in value.split(",") if "=" in part]
    timestamps = [v.strip() for k, v in pairs if k.strip() == "t"]
    signatures = [v.strip() for k, v in pairs if k.strip() == "v1"]
    if len(timestamps) != 1:
        raise BadSignature("Stripe-Signature has no timestamp (t=...)")
    if not signatures:
        raise BadSignature("Stripe-Signature has no v1 signature")
    _check_time(timestamps[0], now, tolerance_s, "the Stripe-Signature timestamp")
    expected = _hmac(secret, timestamps[0].encode() + b"." + body, "sha256").hex().encode()
    matched = [s for s in signatures if hmac.compare_digest(expected, s.encode("utf-8", "replace"))]
    if not matched:
        raise BadSignature("Stripe-Signature does not match the body and timestamp")
    return f"{timestamps[0]}:{matched[0]}"


NOT_PARSED = object()


def parse_body(body: bytes, content_type: str | None) -> Any:
    """The body as data: JSON, or form fields (``application/x-www-form-urlencoded``, as
    Slack's slash commands send) as an object; ``NOT_PARSED`` when it is neither."""
    if content_type and content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return NOT_PARSED
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return NOT_PARSED


def map_inputs(
    mapping: InputMapping | None,
    body: bytes,
    content_type: str | None,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> tuple[Any, str | None]:
    """(the run's inputs, or None with the reason they cannot be built)."""
    parsed = parse_body(body, content_type)
    if mapping is None or mapping.body is None:
        if not isinstance(parsed, dict):
            return None, "the request body must be a JSON object of the workflow's inputs"
        inputs: dict[str, Any] = dict(parsed)
    else:
        if parsed is NOT_PARSED:
            try:
                parsed = body.decode()
            except UnicodeDecodeError:
                return None, "the request body is neither JSON, form fields nor UTF-8 text"
        inputs = {mapping.body: parsed}
    if mapping is not None:
        for name, header in mapping.headers.items():
            value = headers.get(header.lower())
            if value is not None:
                inputs[name] = value
        for name, parameter in mapping.query.items():
            value = query.get(parameter)
            if value is not None:
                inputs[name] = value
    return inputs, None
