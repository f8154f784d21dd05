"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from prefect.client.orchestration import get_client
from prometheus_client import generate_latest

from api import (
    admin_keys,
    approvals,
    bundles,
    credentials,
    dead_letters,
    executions,
    node_types,
    schedules,
    templates,
    ui,
    versions,
    webhooks,
    workflow_metadata,
    workflows,
)
from api import audit as audit_routes
from api.approval_desk import ApprovalDesk
from api.approval_links import LinkSigner
from api.approval_notifier import run_approval_notifier
from api.auth import require_metrics_key
from api.budgets import router as budgets_router
from api.compiling import CanvasCompiler
from api.debugging import DebugService
from api.debugging import router as debugging_router
from api.docs import install_docs
from api.errors import install_error_handlers
from api.health import health_checks, pool_health, prefect_database
from api.metrics import Metrics
from api.outbox import Drainer
from api.outbox import running as running_drainer
from api.pauses import router as pauses_router
from api.prefect_gateway import PrefectGateway
from api.rate_limit import MemoryRateLimiter, RedisRateLimiter
from api.replay_guard import MemoryReplayGuard, RedisReplayGuard
from api.run_end_watcher import RunEndWatcher
from api.runs import RunService
from api.schedule_service import ScheduleService
from api.settings import ApiSettings
from api.stream_slots import StreamSlots
from api.stream_tokens import StreamTokens, redact_access_logs, token_key
from api.webhook_service import WebhookService
from builder.plan_cache import PlanCache
from deployments.workflow_deployments import WorkflowDeployments
from flows.decisions import DecisionSigner
from flows.event_log import event_log_from_env
from node_handlers.catalog import NodeTypeCatalog
from node_handlers.registry import build_registry
from store.api_keys import ApiKeys
from store.approval_groups import ApprovalGroups
from store.approval_notices import ApprovalNotices
from store.approval_votes import ApprovalVotes
from store.audit import AuditLog
from store.budgets import Budgets
from store.credentials import Credentials
from store.db import make_engine, sessions, upgrade_schema
from store.node_executions import NodeExecutions
from store.outbox import RunOutbox
from store.queries import Executions, NodeOutcomes, Workflows
from store.secrets import SecretBox
from store.triggers import ScheduleOverlaps, Webhooks
from store.workflow_meta import WorkflowCatalog

METRICS_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for code, why in (
        (401, "Not the metrics key"),
        (403, "Closed: no metrics key is set"),
        (503, "The database is unavailable"),
    )
}
"""/metrics answers text, and its refusals JSON error bodies (``api.errors``)."""


class BodySizeLimit:
    """Refuse request bodies over the limit with 413, chunked ones included.

    A declared Content-Length over the limit is refused before the app runs. A body that
    grows past the limit while it is read (chunked, or lying about its length) gets the 413
    at once; the app is told the client went away, and whatever it tries to answer is
    dropped (raising instead would reach FastAPI's body parser as a 400)."""

    def __init__(self, app: Any, limit: int, path_limits: tuple[tuple[str, int], ...] = ()):
        """``path_limits``: (path prefix, limit) pairs, for routes that take less (webhooks)."""
        self.app, self.default_limit, self.path_limits = app, limit, path_limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = min([self.default_limit] + [n for prefix, n in self.path_limits if path.startswith(prefix)])
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        seen = 0
        refused = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                refused = True
                await self._refuse(send, limit)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Any, limit: int) -> None:
        response = JSONResponse({"detail": f"request body larger than {limit} bytes", "issues": []}, status_code=413)
        await response({"type": "http"}, None, send)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        url = settings.sqlalchemy_url()
        await upgrade_schema(url)
        engine = make_engine(url)
        database = sessions(engine)
        event_log = event_log_from_env()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(event_log.close)
            # One Prefect client (and connection pool) for the process, not one per request.
            prefect = PrefectGateway(await stack.enter_async_context(get_client()), settings.prefect_timeout_s)
            app.state.engine, app.state.sessions, app.state.event_log = engine, database, event_log
            registry = build_registry()  # the handler settings of the environment (the loop cap)
            app.state.node_types = NodeTypeCatalog(registry)  # described once: the schemas do not change
            compiler = CanvasCompiler(
                registry, settings.compile_limits(), PlanCache(settings.plan_cache_nodes), metrics.canvas_compiles
            )
            stack.callback(compiler.close)
            secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
            box = SecretBox.from_settings(secret_key, settings.home)
            app.state.credentials = Credentials(database, SecretBox.for_credentials(secret_key, settings.home))
            accepted = asyncio.Event()  # a run waits in the outbox: its drainer looks at once
            app.state.runs = RunService(
                workflows=Workflows(database),
                executions=Executions(database),
                outcomes=NodeOutcomes(database),
                deployments=WorkflowDeployments(settings.work_pool, settings.owner_max_runs),
                prefect=prefect,
                registry=registry,
                event_log=event_log,
                metrics=metrics,
                compiler=compiler,
                decisions=DecisionSigner.from_settings(settings.decision_key, settings.secret_key, settings.home),
                prefect_public_url=settings.prefect_public_url,
                outbox=RunOutbox(database),
                credentials=app.state.credentials,
                audit=AuditLog(database),
                max_waiting=settings.accept_max_waiting,
                accepted=accepted.set,
            )
            # Accepted runs get their flow runs from this process's drainer (api/outbox.py),
            # those a dead API process left too.
            drainer = Drainer(
                app.state.runs.outbox,
                app.state.runs.create_flow_run,
                app.state.runs.fail_unsent,
                concurrency=settings.accept_create_concurrency,
                scan_s=settings.accept_scan_s,
                lease_s=settings.prefect_timeout_s + 10,
                wake=accepted,
            )
            await stack.enter_async_context(running_drainer(drainer))
            app.state.prefect = prefect
            # The streams' question "has my run ended?", asked of Prefect once for all of them.
            app.state.run_ends = await stack.enter_async_context(
                RunEndWatcher(prefect, app.state.runs.executions, settings.stream_end_check_s).running()
            )
            app.state.audit, app.state.catalog = AuditLog(database), WorkflowCatalog(database)
            app.state.schedules = ScheduleService(
                app.state.runs, prefect, ScheduleOverlaps(database), audit=app.state.audit
            )
            limiter = (
                RedisRateLimiter(settings.redis_url, settings.webhook_rate_limit)
                if settings.redis_url
                else MemoryRateLimiter(settings.webhook_rate_limit)
            )
            stack.push_async_callback(limiter.close)
            refused_limiter = (
                RedisRateLimiter(
                    settings.redis_url, settings.webhook_refused_rate_limit, prefix="flowmaestro:ratelimit:refused:"
                )
                if settings.redis_url
                else MemoryRateLimiter(settings.webhook_refused_rate_limit)
            )
            stack.push_async_callback(refused_limiter.close)
            # Redis for /health: the event log's or the rate limiter's, when either is on Redis.
            app.state.redis = getattr(event_log, "redis", None) or getattr(limiter, "redis", None)
            replays = RedisReplayGuard(limiter.redis) if isinstance(limiter, RedisRateLimiter) else MemoryReplayGuard()
            app.state.webhooks = WebhookService(
                app.state.runs, Webhooks(database, box), limiter, replays, refused_limiter
            )
            app.state.stream_tokens = StreamTokens(token_key(settings), settings.stream_token_ttl_s)
            app.state.api_keys = ApiKeys(database)
            app.state.debugging = DebugService(
                app.state.runs,
                NodeOutcomes(database),
                NodeExecutions(database),
                event_log,
                test_wait_s=settings.node_test_wait_s,
            )
            app.state.budgets = Budgets(database)
            app.state.approval_desk = ApprovalDesk(
                prefect=prefect,
                sessions=database,
                groups=ApprovalGroups(database),
                votes=ApprovalVotes(database),
                signer=app.state.runs.decisions,
            )
            app.state.approval_links = LinkSigner(app.state.runs.decisions.key)
            app.state.approval_notices = ApprovalNotices(database)
            if settings.smtp_url is not None or settings.approval_webhook_secret is not None:
                # Notices go by email or signed webhook: with neither set up there is nothing to
                # send, and no process scans Prefect for them.
                await stack.enter_async_context(run_approval_notifier(app, settings))
            yield

    metrics = Metrics()
    app = FastAPI(
        title="FlowMaestro",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Save canvas workflows, run them on Prefect workers, follow them live.",
    )
    install_docs(app)  # Swagger UI and ReDoc from here, not a CDN
    app.state.key_owners = settings.key_owners()
    app.state.admin_key = settings.admin_key
    redact_access_logs()  # stream tokens travel in URLs
    app.state.stream_slots = StreamSlots(settings.max_streams_per_run)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    app.add_middleware(
        BodySizeLimit, limit=settings.max_request_bytes, path_limits=(("/hooks/", settings.webhook_max_body_bytes),)
    )
    # Before the workflows' routes: another method on /api/workflows/import then answers 405
    # with Allow: POST, not the methods of /api/workflows/{workflow_id}.
    app.include_router(bundles.router)  # export, import
    app.include_router(workflows.router)
    app.include_router(executions.router)
    app.include_router(dead_letters.router)
    app.include_router(schedules.router)
    app.include_router(webhooks.router)
    app.include_router(webhooks.intake)
    app.include_router(node_types.router)
    app.include_router(credentials.router)
    app.include_router(admin_keys.router)
    app.include_router(debugging_router)
    app.include_router(workflow_metadata.router)
    app.include_router(audit_routes.router)
    app.include_router(pauses_router)
    app.include_router(versions.router)  # versions, diff, rollback
    app.include_router(templates.router)
    app.include_router(budgets_router)
    app.include_router(approvals.router)
    ui.mount(app)  # the run page, the list, the playground and the credentials under /ui (docs/ui.md)

    def openapi() -> dict[str, Any]:
        # The stream's events are no JSON body, so FastAPI leaves their schemas out: added here.
        if app.openapi_schema is None:
            app.openapi_schema = executions.publish_stream_events(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(
        "/health",
        tags=["operations"],
        responses={
            503: {
                "description": "Degraded: the checks name what is down (with Retry-After)",
                "content": {"application/json": {"schema": {}}},
            }
        },
    )
    async def health(request: Request) -> JSONResponse:
        """Checks the database, the Prefect server and Redis (when used); 503 names what is down.
        ``pools``: the work pool runs go to, and whether a live worker polls it (none: runs wait;
        not a 503, the API itself is up)."""
        state = request.app.state
        checks, pools = await asyncio.gather(
            health_checks(state.engine, state.prefect.client, state.redis),
            pool_health(state.prefect.client, [settings.work_pool]),
        )
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "checks": checks, "pools": pools, **prefect_database(settings.home)},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": "5"},
        )

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse, responses=METRICS_ERRORS)
    async def prometheus_metrics(request: Request) -> PlainTextResponse:
        """Prometheus metrics: for the bearer key ``FLOWMAESTRO_METRICS_KEY``; closed (403) without
        one unless ``FLOWMAESTRO_METRICS_PUBLIC=true``."""
        require_metrics_key(request, settings.metrics_key, settings.metrics_public)
        await metrics.refresh(request.app.state.sessions)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    return app
