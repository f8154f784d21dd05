"""The API key ``flowmaestro serve`` uses when ``FLOWMAESTRO_API_KEYS`` is not set: generated
once into ``$FLOWMAESTRO_HOME/api-key`` (mode 0600) and read back at every later start, so
clients keep working across restarts. The key is never printed: the file is where it is
(``--api-key-file`` of the CLI reads it as it is)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

KEY_FILE = "api-key"
LOCAL_OWNER = "local"


def local_api_key(home: Path) -> tuple[str, Path, bool]:
    """(the key, its file, whether it was generated now)."""
    path = home / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text().strip()
        if key:
            return key, path, False
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    # Written whole under another name, then moved into place: a reader never sees half a key,
    # and the file never exists with wider permissions than 0600.
    partial = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    os.replace(partial, path)
    return key, path, True
