"""Secrets FlowMaestro must read back (webhook signing secrets), encrypted at rest.

A database dump alone does not reveal them: each is encrypted with Fernet (AES-128-CBC
with HMAC-SHA256, from ``cryptography``) under a key that is not in the database:

- ``FLOWMAESTRO_SECRET_KEY`` when set: a Fernet key as such (``Fernet.generate_key()``),
  or any other string, from which the key is derived (SHA-256);
- otherwise ``<FLOWMAESTRO_HOME>/secret.key``, generated on first use with mode 0600.

Every API process of one deployment must see the same key; losing it makes the stored
secrets unreadable (rotate each webhook then).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

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


class SecretBox:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, secret_key: str | None, home: Path) -> SecretBox:
        return cls(_fernet_key(secret_key) if secret_key else _key_file(home))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        """The secret; ``ValueError`` when it was sealed under another key."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("a stored secret cannot be decrypted with this FLOWMAESTRO_SECRET_KEY") from exc

    def __repr__(self) -> str:  # never the key
        return "SecretBox(...)"
