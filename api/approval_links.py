"""Decision links: a signed, expiring token that lets one identity decide one approval once,
from a page opened without an API key (``/ui/decide#<token>``).

The token is ``<payload>.<mac>``: the payload (base64url JSON) names the approval, the
identity, the expiry and a random nonce; the mac is HMAC-SHA256 under a key derived from the
decision key (so the API processes that sign decisions share it, and it reveals nothing of
it). It travels in the URL's fragment, which browsers do not send to the server nor in a
Referer, and then in request bodies: never in a path or query that an access log keeps.

The page's POST is safe from cross-site requests because nothing ambient authorises it: no
cookie, no key in the browser; the token is the authority and a third-party site does not
have it. The page also sends back a per-page nonce from its first call (HMAC of the token's
nonce), so a decision is made from the page and not by replaying a link alone. Each link
decides once (``store.approval_notices``: the nonce recorded when used).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

LINK_LABEL = b"flowmaestro approval links v1"


class BadLink(Exception):
    """Why a link is refused (says nothing of the key)."""


@dataclass(frozen=True)
class Link:
    approval_id: str
    identity: str
    expires_at: int
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    def __init__(self, decision_key: bytes):
        self.key = hmac.new(decision_key, LINK_LABEL, hashlib.sha256).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue(self, approval_id: str, identity: str, ttl_s: float, now: float | None = None) -> str:
        body = {
            "a": approval_id,
            "u": identity,
            "e": int((now or time.time()) + ttl_s),
            "n": secrets.token_hex(16),
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def read(self, token: str, now: float | None = None) -> Link:
        payload, _, mac = token.partition(".")
        if not payload or not mac or len(token) > 2000:
            raise BadLink("not a decision link")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            raise BadLink("the decision link's signature does not verify")
        try:
            body = json.loads(_unb64(payload))
            link = Link(str(body["a"]), str(body["u"]), int(body["e"]), str(body["n"]))
        except (ValueError, KeyError, TypeError):
            raise BadLink("not a decision link") from None
        if link.expires_at < (now or time.time()):
            raise BadLink("the decision link has expired")
        return link

    def page_nonce(self, link: Link) -> str:
        """The nonce the decision page gets from its first call and sends with the decision."""
        return _b64(hmac.new(self.key, f"page:{link.nonce}".encode(), hashlib.sha256).digest())[:32]

    def checks_page_nonce(self, link: Link, nonce: str) -> bool:
        return hmac.compare_digest(self.page_nonce(link).encode(), nonce.encode())
