"""One redaction function for every secret in play: handlers, the journal, node logs.

The journal keeps a failed node's configuration and so also redacts fields whose names
say they hold secrets (``SECRET_FIELDS``, ``redact(..., secret_fields=...)``); otherwise it
goes through exactly the same function as the handlers.

A server that echoes a credential rarely echoes it verbatim only: it comes back base64'd
(a decoded ``Authorization: Basic`` header, a JWT-ish blob), URL-encoded (a query string
echoed back) or hex-encoded (a debug dump). ``secret_forms`` lists those encodings of a
secret, and ``redact`` replaces all of them, longest first, so that a form containing
another one is replaced whole.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
SECRET_FIELDS = re.compile(r"(authorization|password|passwd|secret|token|api[-_]?key|cookie)", re.IGNORECASE)
"""Field names whose values are secrets whatever they are (a configuration kept with a failure)."""
MIN_EMBEDDED_CHARS = 6
"""Shortest base64 run of a secret embedded in a longer base64 stream that is redacted:
shorter runs would match ordinary text by chance."""


def _b64_variants(data: bytes) -> set[str]:
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(data).decode()
        forms |= {text, text.rstrip("=")}
    return forms


def _embedded_b64(data: bytes) -> set[str]:
    """The base64 characters that encode only ``data``, at each of the three alignments it
    can have inside a longer base64 stream (``user:secret`` of basic auth, for one): one of
    them is in any base64 text that contains ``data``."""
    cores = set()
    for offset in range(3):
        bits_start, bits_end = 8 * offset, 8 * (offset + len(data))
        first, last = -(-bits_start // 6), bits_end // 6  # characters wholly inside the secret's bits
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + data + b"\0\0").decode()
            core = text[first:last]
            if len(core) >= MIN_EMBEDDED_CHARS:
                cores.add(core)
    return cores


def secret_forms(secret: str) -> set[str]:
    """``secret`` and its common encodings: base64 (standard and URL-safe, with and without
    padding, and embedded in a longer stream), URL encoding (quote and quote_plus) and hex
    (lower and upper case)."""
    if not secret:
        return set()
    data = secret.encode()
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
    hexed = binascii.hexlify(data).decode()
    forms |= {hexed, hexed.upper()}
    forms |= _b64_variants(data) | _embedded_b64(data)
    return {f for f in forms if f}


def redaction_forms(secrets: Iterable[str]) -> list[str]:
    """Every form of every secret, longest first."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    return sorted(forms, key=len, reverse=True)


def redact(value: Any, secrets: Iterable[str], *, secret_fields: re.Pattern[str] | None = None) -> Any:
    """``value`` with every form of each secret replaced, longest first, in strings nested in
    dicts, lists and tuples too (keys included). ``secret_fields``: the non-empty value of a
    field whose name matches is replaced whole."""
    forms = redaction_forms(secrets)
    if not forms and secret_fields is None:
        return value
    return _redact(value, forms, secret_fields, "")


def _redact(value: Any, forms: list[str], secret_fields: re.Pattern[str] | None, field: str) -> Any:
    if secret_fields is not None and field and secret_fields.search(field) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, str):
        for form in forms:
            if form in value:
                value = value.replace(form, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, forms, None, ""): _redact(v, forms, secret_fields, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, forms, secret_fields, field) for v in value]
    return value
