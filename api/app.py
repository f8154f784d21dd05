"""The FastAPI application factory."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from sqlalchemy import text

from api import executions, workflows
from api.db import make_engine, sessions, upgrade_schema
from api.errors import install_error_handlers
from api.metrics import Metrics
from api.runs import RunService
from api.settings import ApiSettings


class BodySizeLimit:
    """Refuse request bodies over the limit with 413, chunked ones included."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes", "issues": []},
                                status_code=413)
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        from flows.event_log import event_log_from_env
        from flows.local_server import ui_url_for
        from flows.settings import EngineSettings

        url = settings.sqlalchemy_url()
        await upgrade_schema(url)
        engine = make_engine(url)
        app.state.engine = engine
        app.state.sessions = sessions(engine)
        ui_url = settings.ui_url or ui_url_for(os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"))
        app.state.event_log = event_log_from_env()
        app.state.runs = RunService(app.state.sessions, metrics, ui_url, app.state.event_log, EngineSettings())
        try:
            yield
        finally:
            await app.state.runs.shutdown()
            await app.state.event_log.close()
            await engine.dispose()

    metrics = Metrics()
    app = FastAPI(title="FlowMaestro", version="0.1.0", lifespan=lifespan,
                  description="Save canvas workflows, run them on Prefect, follow them live.")
    app.state.settings = settings
    app.state.key_owners = settings.key_owners()
    app.state.metrics = metrics
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.include_router(workflows.router)
    app.include_router(executions.router)

    @app.get("/health", tags=["operations"])
    async def health(request: Request) -> JSONResponse:
        """Checks the database and the Prefect server."""
        from flows.local_server import healthy

        checks: dict[str, str] = {}
        try:
            async with request.app.state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # report, do not raise: this is the health endpoint
            checks["database"] = f"error: {type(exc).__name__}"
        api_url = os.environ.get("PREFECT_API_URL", "")
        checks["prefect"] = "ok" if api_url and healthy(api_url) else "unreachable"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    return app
