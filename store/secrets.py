"""Secrets FlowMaestro must read back (webhook signing secrets, stored credentials),
encrypted at rest.

A database dump alone does not reveal them: each is encrypted with Fernet (AES-128-CBC
with HMAC-SHA256, from ``cryptography``) under a key that is not in the database:

- ``FLOWMAESTRO_SECRET_KEY`` when set: a KEY RING, one or more keys separated by commas.
  Each is a Fernet key as such (``Fernet.generate_key()``) or any other string, from which
  the key is derived (SHA-256). The first key encrypts; every key decrypts
  (``cryptography``'s ``MultiFernet``), so a new key goes first, ``flowmaestro secrets
  reseal`` re-encrypts every stored secret under it, and then the old one can be dropped
  (docs/credentials.md);
- otherwise ``<FLOWMAESTRO_HOME>/secret.key``, generated on first use with mode 0600.

Stored credentials are sealed with keys DERIVED from the ring (``credentials_key_ring``),
one per key and in the same order: workers open credentials, so they get the derived ring
(``FLOWMAESTRO_CREDENTIALS_KEY``, which ``flowmaestro serve`` hands its workers), never the
ring itself, which also opens webhook secrets and signs what the API hands out.

Every API process of one deployment must see the same ring, and every worker the same
derived ring; losing every key that sealed a secret makes it unreadable (rotate each
webhook, store each credential again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE = "secret.key"


def _fernet_key(value: str) -> bytes:
    raw = value.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def private_key_file(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The contents of a key file: read, or written once with ``generate()``. Written to a
    file of its own with mode 0600 from the start (no window where another user could read
    it), then linked into place, which fails if the file exists: of two processes starting
    at once, one writes and the other reads the whole key, never a half-written one."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = generate()
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(value)
    try:
        os.link(draft, path)
    except FileExistsError:
        return path.read_bytes().strip()
    finally:
        draft.unlink()
    return value


def _key_file(home: Path) -> bytes:
    return private_key_file(home / KEY_FILE, Fernet.generate_key)


KEY_SEPARATOR = ","


def key_ring(secret_key: str) -> list[bytes]:
    """The Fernet keys of ``FLOWMAESTRO_SECRET_KEY``, first (the one that encrypts) first."""
    keys = [_fernet_key(part) for part in secret_key.split(KEY_SEPARATOR) if part.strip()]
    if not keys:
        raise ValueError("FLOWMAESTRO_SECRET_KEY names no key")
    return keys


CREDENTIALS_LABEL = b"flowmaestro credentials v1"


def credentials_key_ring(secret_key: str | None, home: Path) -> list[bytes]:
    """The Fernet keys that seal stored credentials: one derived from each key of the ring
    (``FLOWMAESTRO_SECRET_KEY``, else the key file under ``home``), in its order. A derived
    key reveals nothing of the key it comes from (HMAC-SHA256)."""
    ring = key_ring(secret_key) if secret_key and secret_key.strip() else [_key_file(home)]
    return [
        base64.urlsafe_b64encode(hmac.new(base64.urlsafe_b64decode(key), CREDENTIALS_LABEL, hashlib.sha256).digest())
        for key in ring
    ]


def credentials_key_text(secret_key: str | None, home: Path) -> str:
    """The derived ring as ``FLOWMAESTRO_CREDENTIALS_KEY`` holds it (comma-separated)."""
    return KEY_SEPARATOR.join(key.decode() for key in credentials_key_ring(secret_key, home))


class SecretBox:
    def __init__(self, key: bytes | list[bytes]):
        """``key``: one Fernet key, or a ring of them (the first encrypts, all decrypt)."""
        keys = [key] if isinstance(key, bytes) else key
        self._fernet = MultiFernet([Fernet(one) for one in keys])

    @classmethod
    def from_settings(cls, secret_key: str | None, home: Path) -> SecretBox:
        return cls(key_ring(secret_key) if secret_key and secret_key.strip() else _key_file(home))

    @classmethod
    def for_credentials(cls, secret_key: str | None, home: Path, credentials_key: str | None = None) -> SecretBox:
        """The box of stored credentials: ``credentials_key`` (the derived ring, as workers
        get it) when given, else derived from ``secret_key`` or the key file under ``home``."""
        if credentials_key and credentials_key.strip():
            return cls(key_ring(credentials_key))
        return cls(credentials_key_ring(secret_key, home))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def reseal(self, sealed: str) -> str:
        """``sealed`` encrypted again under the first key of the ring (``ValueError`` when no
        key of the ring opens it); the same secret inside."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("a stored secret cannot be decrypted with any key of FLOWMAESTRO_SECRET_KEY") from exc

    def open(self, sealed: str) -> str:
        """The secret; ``ValueError`` when it was sealed under another key."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("a stored secret cannot be decrypted with any key of FLOWMAESTRO_SECRET_KEY") from exc

    def __repr__(self) -> str:  # never the key
        return "SecretBox(...)"
