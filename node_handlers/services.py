"""What the handlers that talk to the outside share within a process: their settings, the
egress policy those settings make, and the pooled clients of http and llm nodes.

A process's entry point builds one ``HandlerServices`` (in its ``RunContext``, from the
environment), the engine hands it to every node in ``NodeContext.services``, and the
context closes it when the process is done: the clients' connections close cleanly
before the event loop ends. Nothing here is a module global, so two contexts in one
process (tests, an API with its worker) never share settings or connections. A handler
called on its own, without services, uses a throwaway one (``services_for``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from node_handlers.egress import EgressPolicy, make_policy, pinned_client
from node_handlers.protected import service_addresses
from node_handlers.sandbox import CodeSandbox
from node_handlers.settings import HandlerSettings
from store.db import make_engine

if TYPE_CHECKING:  # credentials.py imports this module
    from node_handlers.credentials import CredentialReader


class HandlerServices:
    """The handler services of one context (``RunContext.services``)."""

    def __init__(
        self,
        settings: HandlerSettings | None = None,
        credentials: CredentialReader | None = None,
        database_url: str | None = None,
    ):
        """``settings``: read from the environment (``FLOWMAESTRO_*``) on first use when not
        given. ``credentials``: where nodes naming a stored credential read it (a worker's
        store); None: such nodes fail, saying the run has no credential store.
        ``database_url``: the store of the worker these services belong to (agent memories,
        budgets); the settings' database when not given."""
        self._given = settings
        self.credentials = credentials
        self.database_url = database_url
        self._clients: dict[tuple[asyncio.AbstractEventLoop, Any], Any] = {}
        """Clients by (event loop, key): pooled connections belong to the loop that opened them."""
        self.budget_waivers: set[tuple[str, str]] = set()
        """Budgets a person let a run go past, ``(run id, budget id)`` (``node_handlers.budgets``)."""

    @classmethod
    def from_environment(cls) -> HandlerServices:
        return cls()

    @cached_property
    def settings(self) -> HandlerSettings:
        return self._given if self._given is not None else HandlerSettings()

    @cached_property
    def egress(self) -> EgressPolicy:
        """The outbound policy of these settings (built on first use: it resolves the names of
        FlowMaestro's own services and reads this machine's addresses)."""
        return make_policy(self.settings.http_allow_hosts, service_addresses(self.settings))

    @cached_property
    def code_sandbox(self) -> CodeSandbox:
        """The sandbox of code nodes with these settings (it probes the machine once)."""
        return CodeSandbox(self.settings)

    def http_client(self) -> httpx.AsyncClient:
        """The client of http nodes, one per event loop: connections are pooled."""
        client: httpx.AsyncClient = self._client(
            "http",
            lambda: pinned_client(follow_redirects=False, headers={"User-Agent": "FlowMaestro"}, policy=self.egress),
        )
        return client

    def openai_client(self, base_url: str, api_key: str) -> openai.AsyncOpenAI:
        """One client per (base URL, key) and event loop. No retries of its own: the engine
        retries with the node's policy. Its connections pass the egress policy."""
        key_id = hashlib.sha256(api_key.encode()).hexdigest()  # held without the key in clear text
        client: openai.AsyncOpenAI = self._client(
            ("openai", base_url, key_id),
            lambda: openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                # openai 3.54 annotates httpx2's client; httpx's works (the llm tests run it)
                http_client=pinned_client(follow_redirects=False, policy=self.egress),  # type: ignore[arg-type]
            ),
        )
        return client

    def anthropic_client(self, base_url: str, api_key: str) -> anthropic.AsyncAnthropic:
        """As ``openai_client``, for the Anthropic Messages protocol."""
        key_id = hashlib.sha256(api_key.encode()).hexdigest()
        client: anthropic.AsyncAnthropic = self._client(
            ("anthropic", base_url, key_id),
            lambda: anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                http_client=pinned_client(follow_redirects=False, policy=self.egress),
            ),
        )
        return client

    def database(self) -> AsyncEngine:
        """FlowMaestro's own database (what an agent's memory is kept in), one engine per
        event loop."""
        url = self.database_url or self.settings.sqlalchemy_url()
        engine: AsyncEngine = self._client(("database", url), lambda: make_engine(url))
        return engine

    def _client(self, key: Any, create: Any) -> Any:
        loop = asyncio.get_running_loop()
        for stale in [k for k in self._clients if k[0].is_closed()]:  # their loop ended: nothing to close
            del self._clients[stale]
        client = self._clients.get((loop, key))
        if client is None or _is_closed(client):
            client = self._clients[(loop, key)] = create()
        return client

    async def close(self) -> None:
        """Close the clients opened in the running event loop, and the code sandbox's spare
        processes: call it before that loop ends."""
        if "code_sandbox" in self.__dict__:
            await self.code_sandbox.close()
        loop = asyncio.get_running_loop()
        for key in [k for k in self._clients if k[0] is loop]:
            client = self._clients.pop(key)
            if isinstance(client, AsyncEngine):
                await client.dispose()
            else:
                await (client.aclose() if isinstance(client, httpx.AsyncClient) else client.close())


def _is_closed(client: Any) -> bool:
    if isinstance(client, AsyncEngine):
        return False  # an engine opens connections again when asked
    return client.is_closed if isinstance(client, httpx.AsyncClient) else client.is_closed()


@asynccontextmanager
async def services_for(given: HandlerServices | None) -> AsyncIterator[HandlerServices]:
    """``given`` (a context's, ``NodeContext.services``), or for a handler called on its own
    a throwaway one read from the environment, closed when the call is done: its client
    serves that one call."""
    if given is not None:
        yield given
        return
    own = HandlerServices.from_environment()
    try:
        yield own
    finally:
        await own.close()
