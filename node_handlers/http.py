"""The http node: one HTTP request with httpx, typed errors, egress policy, secrets.

Credentials never live in a canvas. ``credential`` names one the run's owner stored
(``node_handlers.credentials``), sent by its type: ``bearer`` as ``Authorization: Bearer``,
``basic`` as ``Authorization: Basic``, ``header`` as its header, ``api_key`` as
``X-API-Key`` (or the header ``credential_header`` names). Or ``auth`` names operator
secrets, read from the environment as ``FLOWMAESTRO_SECRET_<NAME>`` when the node runs, if
the run's owner may use them and only to the hosts they are bound to
(``node_handlers.operator_secrets``). Their values, in every common encoding, are redacted
from the node's output and error messages (servers echo them
back). Redirects are followed here, hop by hop, so that credentials are sent to the
original origin only, and to a host of the secret; every hop's connection passes the
egress policy (``egress``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal

import httpx
from opentelemetry import propagate
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from builder.catalog import NodeConfig, Templatable, at_most_one_of
from builder.plan import RetryPolicy
from builder.templates import is_template
from node_handlers.base import ERROR_HANDLE, SOURCE_HANDLE, Completed, NodeContext, NodeError, NodeHandler
from node_handlers.credentials import CredentialName, read_credential
from node_handlers.operator_secrets import OperatorSecret, read_secret
from node_handlers.redaction import redact
from node_handlers.services import HandlerServices, services_for
from node_handlers.settings import SecretName

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
STATUS_CLASS = re.compile(r"^[1-5]xx$")
BODY_EXCERPT_CHARS = 300
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
API_KEY_HEADER = "X-API-Key"
"""The header an ``api_key`` credential goes in unless the node names another."""
HTTP_CREDENTIAL_TYPES = ("bearer", "basic", "header", "api_key")


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token_secret: SecretName


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: str
    password_secret: SecretName


class HeaderAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["header"]
    header: str = Field(min_length=1, description="Header that carries the secret, e.g. X-API-Key.")
    value_secret: SecretName


Auth = Annotated[BearerAuth | BasicAuth | HeaderAuth, Field(discriminator="type")]


def _http_json_schema(schema: dict[str, Any]) -> None:
    """What the validators check, as JSON Schema: one body at most, one way to authenticate,
    statuses that exist."""
    schema["allOf"] = [at_most_one_of("json", "body", "form"), at_most_one_of("auth", "credential")]
    statuses = schema["properties"]["expected_status"]["anyOf"][0]
    statuses["items"] = {
        "anyOf": [
            {"type": "integer", "minimum": 100, "maximum": 599},
            {"type": "string", "pattern": "^[1-5][xX][xX]$"},
        ]
    }


DEFAULT_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-disposition",
    "location",
    "etag",
    "last-modified",
    "retry-after",
    "link",
)
"""What a flow usually reads of a response; ``response_headers`` changes it per node."""


class HttpConfig(NodeConfig):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra=_http_json_schema)

    method: Templatable[Method] = Field("GET", description="HTTP method.")
    url: str = Field(min_length=1, description="http(s) URL; a template.")
    headers: Templatable[dict[str, Any]] = Field(default_factory=dict, description="Request headers.")
    query: Templatable[dict[str, Any]] = Field(
        default_factory=dict, description="Query parameters (a list value repeats the parameter)."
    )
    json_body: Any = Field(None, alias="json", description="JSON body (sets Content-Type: application/json).")
    body: str | None = Field(None, description="Raw text body.")
    form: Templatable[dict[str, Any]] | None = Field(None, description="Form body (x-www-form-urlencoded).")
    auth: Auth | None = Field(None, description="Credentials by secret name: bearer, basic or header.")
    credential: CredentialName | None = Field(
        None,
        description="A stored credential sent by its type: bearer as Authorization: Bearer, basic as "
        f"Authorization: Basic, header as its header, api_key as {API_KEY_HEADER} (or credential_header).",
    )
    credential_header: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description=f"The header of an api_key credential ({API_KEY_HEADER} when absent).",
    )
    timeout_s: Templatable[float] = Field(30.0, description="Deadline of the whole request, redirects included.")
    expected_status: Templatable[list[int | str]] = Field(
        default_factory=lambda: ["2xx"],
        description="Statuses that count as success: codes or classes such as '2xx'. Others fail the node.",
    )
    follow_redirects: Templatable[bool] = Field(True, description=f"Follow up to {MAX_REDIRECTS} redirects.")
    max_response_bytes: Templatable[int] = Field(
        DEFAULT_MAX_RESPONSE_BYTES, description="Larger responses fail the node (decompressed size)."
    )
    response_headers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RESPONSE_HEADERS),
        max_length=100,
        description="Response headers kept in the output (case-insensitive); ['*'] keeps all. "
        "By default: " + ", ".join(DEFAULT_RESPONSE_HEADERS) + ".",
    )
    idempotency_key: Templatable[str] | bool = Field(
        True,
        description="The Idempotency-Key header: true sends "
        "'<run id>:<node id>:<path>' (the same when a run executed "
        "again repeats the request), a string sends that, false none.",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) and "{" not in value else value

    @field_validator("expected_status", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) or (isinstance(value, str) and not is_template(value)) else value

    @field_validator("expected_status")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else []:
            if isinstance(item, int) and not 100 <= item <= 599:
                raise ValueError(f"{item} is not an HTTP status")
            if isinstance(item, str) and not STATUS_CLASS.match(item.lower()):
                raise ValueError(f"{item!r} is neither a status code nor a class such as '2xx'")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpConfig:
        given = [
            name
            for name, value in (("json", self.json_body), ("body", self.body), ("form", self.form))
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give at most one of json, body and form; got {' and '.join(given)}")
        if self.auth is not None and self.credential is not None:
            raise ValueError("give auth (operator secrets) or credential (a stored one), not both")
        return self


def is_expected(status: int, expected: list[int | str]) -> bool:
    return any(status == item if isinstance(item, int) else str(status)[0] == item[0] for item in expected)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ResponseTooLarge(NodeError):
    def __init__(self, limit: int, url: httpx.URL):
        super().__init__(
            f"the response of {url} is larger than max_response_bytes ({limit} bytes); raise the limit or ask for less",
            error_type="ResponseTooLarge",
            details={"limit": limit},
        )


class HttpHandler(NodeHandler):
    type = "http"
    version = "1"
    label = "HTTP request"
    category = "integration"
    side_effects = True
    handle_docs = (SOURCE_HANDLE, ERROR_HANDLE)
    description = "Sends an HTTP request; output {status, headers, body, url}."
    Config = HttpConfig
    default_retry = RetryPolicy(
        max_attempts=3,
        initial_delay_s=1.0,
        backoff_factor=2.0,
        max_delay_s=30.0,
        jitter=0.2,
        retry_on=frozenset({"5xx", "429", "timeout", "connection"}),
    )

    async def run(self, config: HttpConfig, ctx: NodeContext) -> Completed:
        async with services_for(ctx.services) as services:
            return await self._run(config, ctx, services)

    async def _run(self, config: HttpConfig, ctx: NodeContext, services: HandlerServices) -> Completed:
        if config.credential is not None:
            credentials, secrets = await stored_credentials_of(
                services, ctx.owner, config.credential, config.credential_header
            )
            bound: OperatorSecret | None = None  # the owner's own credential: the owner chose the URL
        else:
            credentials, secrets, bound = credentials_of(config.auth, ctx.owner)
        extra = {}
        if config.idempotency_key is not False and not _has_header(config.headers, IDEMPOTENCY_HEADER):
            key = ctx.idempotency_key if config.idempotency_key is True else str(config.idempotency_key)
            if key:
                extra[IDEMPOTENCY_HEADER] = key
        if not _has_header(config.headers, TRACEPARENT_HEADER):
            # The node's span, when the run is traced (flows/observing.py): the server's spans join the trace.
            propagate.inject(extra)
        deadline = float(config.timeout_s)
        try:
            async with asyncio.timeout(deadline):
                response, body = await self._exchange(services.http_client(), config, credentials, bound, extra)
        except (TimeoutError, httpx.TimeoutException):
            raise NodeError(
                f"{config.method} {config.url} timed out after {deadline:g} s",
                retry_class="timeout",
                error_type="Timeout",
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # retrying cannot fix the URL
            raise NodeError(f"invalid URL {config.url!r}: {exc}", error_type="InvalidUrl") from None
        except httpx.TransportError as exc:
            message = redact(f"{config.method} {config.url} failed: {type(exc).__name__}: {exc}", secrets)
            raise NodeError(message, retry_class="connection", error_type="ConnectError") from None
        output = {
            "status": response.status_code,
            "headers": kept_headers(response.headers, config.response_headers),
            "body": decode_body(response, body),
            "url": str(response.url),
        }
        output = redact(output, secrets)
        if not is_expected(response.status_code, list(config.expected_status)):  # type: ignore[arg-type]
            raise status_error(response, output["body"], str(config.method))
        return Completed(output=output)

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        config: HttpConfig,
        credentials: dict[str, str],
        bound: OperatorSecret | None,
        extra: dict[str, str],
    ) -> tuple[httpx.Response, bytes]:
        request = client.build_request(
            str(config.method),
            config.url,
            headers={**stringify(config.headers), **extra, **credentials},
            params=config.query or None,
            json=config.json_body,
            content=config.body,
            data=config.form,
            timeout=float(config.timeout_s),
        )
        origin = request.url.copy_with(path="/", query=None, fragment=None)
        for _hop in range(MAX_REDIRECTS + 1):
            if bound is not None and any(name in request.headers for name in credentials):
                bound.check_url(request.url)  # every request that carries the secret, redirects included
            response = await client.send(request, stream=True)
            try:
                if not (config.follow_redirects and is_redirect(response)):
                    return response, await read_limited(response, int(config.max_response_bytes))
            finally:
                await response.aclose()
            request = redirect_request(client, request, response, origin, credentials)
        raise NodeError(f"{config.url} redirected more than {MAX_REDIRECTS} times", error_type="TooManyRedirects")


IDEMPOTENCY_HEADER = "Idempotency-Key"
TRACEPARENT_HEADER = "traceparent"


def kept_headers(headers: httpx.Headers, wanted: list[str]) -> dict[str, str]:
    """The response headers a node's output keeps: every header of every response went into
    results and events (cookies, tracing ids, server banners) when most flows read two."""
    if "*" in wanted:
        return dict(headers)
    names = {name.lower() for name in wanted}
    return {name: value for name, value in headers.items() if name.lower() in names}


def _has_header(headers: Any, name: str) -> bool:
    return any(str(k).lower() == name.lower() for k in dict(headers))


def stringify(headers: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(headers).items() if v is not None}


def credentials_of(
    auth: BearerAuth | BasicAuth | HeaderAuth | None, owner: str | None
) -> tuple[dict[str, str], list[str], OperatorSecret | None]:
    """The headers carrying the node's credentials, every form the secret takes on the wire
    (the value, the header value, the base64 of basic auth), to redact, and the secret
    (``owner``'s to use, else NodeError), whose hosts every request carrying it must go to."""
    if auth is None:
        return {}, [], None
    if isinstance(auth, BearerAuth):
        secret = read_secret(auth.token_secret, owner)
        return {"Authorization": f"Bearer {secret.value}"}, [secret.value, f"Bearer {secret.value}"], secret
    if isinstance(auth, BasicAuth):
        secret = read_secret(auth.password_secret, owner)
        encoded = base64.b64encode(f"{auth.username}:{secret.value}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}, [secret.value, encoded, f"Basic {encoded}"], secret
    secret = read_secret(auth.value_secret, owner)
    return {auth.header: secret.value}, [secret.value], secret


async def stored_credentials_of(
    services: HandlerServices, owner: str | None, name: str, api_key_header: str | None
) -> tuple[dict[str, str], list[str]]:
    """The headers carrying the stored credential ``name`` of ``owner``, and every form its
    values take on the wire, to redact."""
    credential = await read_credential(services, owner, name, HTTP_CREDENTIAL_TYPES)
    data = credential.data
    if credential.type == "bearer":
        return {"Authorization": f"Bearer {data['token']}"}, [data["token"], f"Bearer {data['token']}"]
    if credential.type == "basic":
        encoded = base64.b64encode(f"{data['username']}:{data['password']}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}, [data["password"], encoded, f"Basic {encoded}"]
    if credential.type == "header":
        return {data["name"]: data["value"]}, [data["value"]]
    return {api_key_header or API_KEY_HEADER: data["api_key"]}, [data["api_key"]]


def is_redirect(response: httpx.Response) -> bool:
    return response.status_code in REDIRECT_STATUSES and "location" in response.headers


def redirect_request(
    client: httpx.AsyncClient,
    request: httpx.Request,
    response: httpx.Response,
    origin: httpx.URL,
    credentials: dict[str, str],
) -> httpx.Request:
    """The next hop, as browsers do it: 303 (and 301/302 after a POST) become a GET without
    a body; credentials go only to the origin of the first request."""
    url = response.url.join(response.headers["location"])
    if url.scheme not in ("http", "https"):
        raise NodeError(f"redirect to {url} is not an http(s) URL", error_type="InvalidRedirect")
    method = request.method
    if (response.status_code == 303 and method != "HEAD") or (response.status_code in (301, 302) and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    headers.pop("Host", None)  # set again from the new URL
    content = request.content if method == request.method else None
    if content is None:
        for name in ("Content-Type", "Content-Length", "Transfer-Encoding"):
            headers.pop(name, None)
    if url.copy_with(path="/", query=None, fragment=None) != origin:
        for name in ("Authorization", "Cookie", *credentials):
            headers.pop(name, None)
    return client.build_request(
        method, url, headers=headers, content=content, extensions={"timeout": request.extensions.get("timeout")}
    )


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(limit, response.url)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():  # decompressed: a small gzip cannot fill memory
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(limit, response.url)
        chunks.append(chunk)
    return b"".join(chunks)


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def decode_body(response: httpx.Response, body: bytes) -> Any:
    """JSON when the content type says so (text if it does not parse), text otherwise."""
    if not body:
        return None if response.request.method == "HEAD" else ""
    try:
        text = body.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    if is_json_type(response.headers.get("content-type", "")):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def status_error(response: httpx.Response, body: Any, method: str) -> NodeError:
    status = response.status_code
    excerpt = body if isinstance(body, str) else json.dumps(body)
    excerpt = (excerpt or "")[:BODY_EXCERPT_CHARS]
    message = f"{method} {response.url} returned {status} {response.reason_phrase}".rstrip()
    if excerpt:
        message += f": {excerpt}"
    details = {"status": status, "body_excerpt": excerpt}
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return NodeError(
            message,
            retry_class="429",
            retry_after_s=retry_after,
            error_type="HttpStatusError",
            details={**details, "retry_after_s": retry_after},
        )
    retry_class = "5xx" if status >= 500 else None
    return NodeError(message, retry_class=retry_class, error_type="HttpStatusError", details=details)


HANDLERS = [HttpHandler]
