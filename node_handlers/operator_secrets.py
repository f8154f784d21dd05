"""Operator secrets: values in the workers' environment, bound to owners and hosts.

A canvas names a secret (``token_secret: "GITHUB"``); the operator declares it with three
environment variables::

    FLOWMAESTRO_SECRET_GITHUB=ghp_...                           # the value
    FLOWMAESTRO_SECRET_GITHUB_OWNERS=alice,bob                  # who may use it
    FLOWMAESTRO_SECRET_GITHUB_HOSTS=api.github.com,ghe.internal:8443   # where it may go

A secret without ``_OWNERS`` is usable by no owner, one without ``_HOSTS`` goes to no host
(secure defaults: a secret declared for one team is not every canvas's). ``*`` in either
list means everyone / everywhere, and is the only way a run without an owner (a local
``flowmaestro run``) uses a secret. A host entry without a port matches every port of the
host; with one, that port only (the scheme's default port when the URL gives none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from node_handlers.base import NodeError

SECRET_ENV_PREFIX = "FLOWMAESTRO_SECRET_"
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""Letters, digits and underscores: a name, never a template, so no secret passes through one."""
OWNERS_SUFFIX, HOSTS_SUFFIX = "_OWNERS", "_HOSTS"
RESERVED_NAMES = frozenset({"KEY"})
"""``FLOWMAESTRO_SECRET_KEY`` is the store's encryption key, never a node's secret."""
ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}


def secret_env_name(name: str) -> str:
    return SECRET_ENV_PREFIX + name.upper()


def _names(text: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (text or "").split(",") if part.strip())


@dataclass(frozen=True)
class HostEntry:
    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> HostEntry:
        """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
        match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<v6port>\d+))?|(?P<host>[^:]+)(?::(?P<port>\d+))?", entry)
        if match is None:
            return cls(entry.strip("[]"), None)  # matches nothing sensible, but names what was written
        host = match["v6"] or match["host"]
        port = match["v6port"] or match["port"]
        return cls(host.rstrip("."), int(port) if port else None)

    def matches(self, host: str, port: int | None) -> bool:
        return self.host == host and (self.port is None or self.port == port)


@dataclass(frozen=True)
class OperatorSecret:
    name: str
    value: str
    owners: frozenset[str]
    hosts: frozenset[str]

    def allows_owner(self, owner: str | None) -> bool:
        return ANY in self.owners or (owner is not None and owner in self.owners)

    def allows_url(self, url: str | httpx.URL) -> bool:
        if ANY in self.hosts:
            return True
        parsed = httpx.URL(str(url))
        host = parsed.host.lower().rstrip(".")
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
        return any(HostEntry.parse(entry.lower()).matches(host, port) for entry in self.hosts)

    def check_url(self, url: str | httpx.URL) -> None:
        """Refuse to send the secret to ``url`` unless its host is one of the secret's."""
        if not self.allows_url(url):
            parsed = httpx.URL(str(url))
            where = f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host
            allowed = ", ".join(sorted(self.hosts)) or "none declared"
            raise NodeError(
                f"secret {self.name!r} may not be sent to {where} (its hosts: {allowed}; the operator "
                f"lists them in {secret_env_name(self.name)}{HOSTS_SUFFIX})",
                error_type="SecretHostDenied",
                details={"secret": self.name, "host": where},
            )


def read_secret(name: str, owner: str | None, environ: Mapping[str, str] | None = None) -> OperatorSecret:
    """The secret ``name`` as the run of ``owner`` may use it; ``NodeError`` naming the
    secret when it is not set or not the owner's."""
    env = os.environ if environ is None else environ
    if (
        not re.match(SECRET_NAME_PATTERN, name)
        or name.upper().endswith((OWNERS_SUFFIX, HOSTS_SUFFIX))
        or name.upper() in RESERVED_NAMES
    ):
        raise NodeError(
            f"{name!r} is not a secret name (letters, digits and underscores; not KEY, not ending "
            f"in {OWNERS_SUFFIX} or {HOSTS_SUFFIX})",
            error_type="MissingSecret",
        )
    variable = secret_env_name(name)
    secret = OperatorSecret(
        name=name,
        value=env.get(variable, ""),
        owners=_names(env.get(variable + OWNERS_SUFFIX)),
        hosts=_names(env.get(variable + HOSTS_SUFFIX)),
    )
    # The owner first: whether a secret exists is none of another owner's business.
    if not secret.allows_owner(owner):
        whose = f"owner {owner!r}" if owner is not None else "a run without an owner"
        raise NodeError(
            f"secret {name!r} is not available to {whose} (the operator lists its owners in {variable}{OWNERS_SUFFIX})",
            error_type="SecretNotAllowed",
            details={"secret": name},
        )
    if not secret.value:
        raise NodeError(
            f"secret {name!r} is not set: define the environment variable {variable} where the workflow runs",
            error_type="MissingSecret",
        )
    return secret
