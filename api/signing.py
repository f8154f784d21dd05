"""Webhook request signatures: HMAC-SHA256 with the hook's secret over
``<timestamp>.<raw body>``, sent as ``X-FlowMaestro-Signature: sha256=<hex>`` with
``X-FlowMaestro-Timestamp: <unix seconds>``. The timestamp is signed too, so a captured
request cannot be replayed once it is more than ``TOLERANCE_S`` old; within that window the
intake remembers each signature and refuses it a second time (``api/replay_guard.py``). A
timestamp ahead of the server's clock is accepted only by ``FUTURE_SKEW_S`` (clock drift): a
request dated further ahead would stay replayable, and be remembered, for longer."""

from __future__ import annotations

import hashlib
import hmac
import re

TIMESTAMP_HEADER = "X-FlowMaestro-Timestamp"
SIGNATURE_HEADER = "X-FlowMaestro-Signature"
TOLERANCE_S = 300
FUTURE_SKEW_S = 30
REMEMBER_S = TOLERANCE_S + FUTURE_SKEW_S + 1
"""How long a signature must be remembered: as long as its timestamp can be accepted."""


class BadSignature(Exception):
    """Why a request is refused (said in the 401; it reveals nothing of the secret)."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float) -> None:
    if not timestamp or not signature:
        raise BadSignature(f"missing {TIMESTAMP_HEADER if not timestamp else SIGNATURE_HEADER} header")
    # ASCII digits only, a sane length: int() fails on '²' and on thousands of digits.
    if not re.fullmatch(r"[0-9]{1,12}", timestamp.strip()):
        raise BadSignature(f"{TIMESTAMP_HEADER} must be unix seconds")
    if now - int(timestamp) > TOLERANCE_S:
        raise BadSignature(f"{TIMESTAMP_HEADER} is more than {TOLERANCE_S} s old")
    if int(timestamp) - now > FUTURE_SKEW_S:
        raise BadSignature(f"{TIMESTAMP_HEADER} is more than {FUTURE_SKEW_S} s ahead of the server's time")
    # Constant time: how long the comparison takes tells nothing of the expected value.
    if not hmac.compare_digest(sign(secret, timestamp.strip(), body).encode(), signature.strip().encode()):
        raise BadSignature(f"{SIGNATURE_HEADER} does not match the body and timestamp")
