"""MCP tools of an agent node: the tools of an MCP server over streamable HTTP (the ``mcp``
SDK), as many as its ``include`` allowlist names.

Each server is listed once per node execution (its tools become the model's, under their
own names) and each call opens a session of its own. Connections pass the egress policy
(the SDK's HTTP client is our pinned one), and ``auth`` names a secret of the run's owner for
its header, as the http tool's does. A tool's error (``isError``) or a server that fails is
the call's error, given to the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, Self

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from pydantic import BaseModel, ConfigDict, Field, model_validator

from builder.catalog import at_most_one_of
from node_handlers.base import NodeError
from node_handlers.credentials import CredentialName
from node_handlers.egress import check_url, pinned_client
from node_handlers.http import Auth, credentials_of, stored_credentials_of
from node_handlers.model_turns import ToolSpec
from node_handlers.operator_secrets import OperatorSecret
from node_handlers.redaction import redact
from node_handlers.services import HandlerServices


class McpTool(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=at_most_one_of("auth", "credential"))
    type: Literal["mcp"]
    url: str = Field(min_length=1, description="The MCP server's streamable HTTP endpoint, e.g. https://host/mcp.")
    include: list[str] | None = Field(
        None, description="The server's tools the model may call; all of them when absent."
    )
    auth: Auth | None = Field(None, description="A secret for the server's auth header, as for http tools.")
    credential: CredentialName | None = Field(
        None, description="A stored credential for the server's auth header, sent as the http node sends it."
    )
    timeout_s: float = Field(30.0, gt=0, description="Deadline of listing the tools, and of each call.")

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if self.auth is not None and self.credential is not None:
            raise ValueError("give auth (operator secrets) or credential (a stored one), not both")
        return self


class McpServer:
    """One MCP server of an agent, with the owner's credentials for it."""

    def __init__(
        self,
        tool: McpTool,
        services: HandlerServices,
        headers: dict[str, str],
        secrets: list[str],
        bound: OperatorSecret | None,
    ):
        self.tool = tool
        self.services = services
        self.headers, self.secrets, self.bound = headers, secrets, bound

    @classmethod
    async def open(cls, tool: McpTool, owner: str | None, services: HandlerServices) -> McpServer:
        """The server with its auth header: the owner's stored credential, read now, or
        operator secrets (bound to their hosts)."""
        if tool.credential is not None:
            headers, secrets = await stored_credentials_of(services, owner, tool.credential, None)
            return cls(tool, services, headers, secrets, None)
        return cls(tool, services, *credentials_of(tool.auth, owner))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[ClientSession]:
        if self.bound is not None:
            self.bound.check_url(httpx.URL(self.tool.url))
        await check_url(self.tool.url, self.services.egress)
        policy = self.services.egress

        def client(
            headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None, auth: httpx.Auth | None = None
        ) -> httpx.AsyncClient:
            return pinned_client(policy=policy, headers=headers, timeout=timeout, auth=auth, follow_redirects=False)

        async with (
            streamablehttp_client(
                self.tool.url, headers=self.headers, timeout=self.tool.timeout_s, httpx_client_factory=client
            ) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session

    async def specs(self) -> list[ToolSpec]:
        try:
            async with asyncio.timeout(self.tool.timeout_s), self.session() as session:
                listed = await session.list_tools()
        except NodeError:
            raise
        except Exception as exc:  # the SDK raises what its transport and protocol raise
            raise NodeError(self.failure("cannot list the tools of", exc), retry_class="connection") from None
        found = [ToolSpec(t.name, t.description or "", t.inputSchema) for t in listed.tools]
        if self.tool.include is not None:
            missing = sorted(set(self.tool.include) - {t.name for t in found})
            if missing:
                raise NodeError(f"the MCP server {self.tool.url} has no tool named {', '.join(missing)}")
            found = [t for t in found if t.name in self.tool.include]
        return found

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """The tool's result: its structured content, else its text; NodeError for an error."""
        try:
            async with asyncio.timeout(self.tool.timeout_s), self.session() as session:
                result = await session.call_tool(name, arguments)
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(self.failure(f"the call of {name} failed at", exc)) from None
        text = "\n".join(getattr(c, "text", "") or json.dumps(c.model_dump(mode="json")) for c in result.content)
        if result.isError:
            raise NodeError(redact(text or f"{name} failed", self.secrets))
        if result.structuredContent is not None:
            return redact(result.structuredContent, self.secrets)
        return redact(text, self.secrets)

    def failure(self, what: str, exc: BaseException) -> str:
        causes = getattr(exc, "exceptions", None)  # the SDK's task groups raise exception groups
        cause = causes[0] if causes else exc
        return str(redact(f"{what} the MCP server {self.tool.url}: {type(cause).__name__}: {cause}", self.secrets))
