"""One error shape for every failure: ``{"detail": ..., "issues": [...]}`` with a 4xx
code for anything the client can fix; a 500 never leaks internals.

A service that is down is a 503 naming it only when its own boundary said so: the store and
the event log raise ``Unavailable("database"|"redis")`` where they do their I/O, the Prefect
gateway ``Unavailable("prefect")``. Any other exception is a 500 (a bug)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from store.errors import Conflict, DomainError, Invalid, NotFound, Unavailable

log = logging.getLogger("flowmaestro.api")


STATUS_OF_ERROR: dict[type[DomainError], int] = {NotFound: 404, Conflict: 409, Invalid: 422, Unavailable: 503}
BODY_NOT_PARSED = "There was an error parsing the body"
"""FastAPI's one 400 (``fastapi.routing``): a body it could not decode at all."""
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class ApiError(Exception):
    """An HTTP answer decided by the HTTP layer itself (authentication, request limits)."""

    def __init__(
        self,
        status: int,
        detail: str,
        issues: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.status, self.detail, self.issues, self.headers = status, detail, issues or [], headers


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI schema documents for the request's path (HEAD with GET), for the
    ``Allow`` of a 405. Starlette's names only the methods of the first route whose path
    matched, and each method of a path is a route of its own (GET and DELETE of
    /api/workflows/{id} are two). Empty for a path the schema does not document."""
    path = request.url.path
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods = {method.upper() for method in operations if method.upper() in METHOD_ORDER}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
            return sorted(methods, key=METHOD_ORDER.index)
    return []


def _body(detail: str, issues: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"detail": detail, "issues": issues or []}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.detail, exc.issues), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF_ERROR.items() if isinstance(exc, kind)), 400)
        headers = None
        body = _body(exc.message, exc.issues)
        if isinstance(exc, Unavailable):
            log.warning("%s %s: %s is down: %s", request.method, request.url.path, exc.service, exc.message)
            headers = {"Retry-After": str(exc.retry_after_s)}
            body["service"] = exc.service
            body.update(exc.details)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            issues.append(
                # The field is in "field": the message does not say it again (a client shows both).
                {"code": "invalid_request", "field": ".".join(loc), "message": str(error.get("msg"))}
            )
        return JSONResponse(_body("invalid request", issues), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:
            # A body FastAPI could not even decode (JSON that is not UTF-8) is as invalid as one
            # that is not JSON, which it answers 422: the same answer, the one routes document.
            return JSONResponse(
                _body(
                    "invalid request",
                    [{"code": "invalid_request", "field": "body", "message": "not JSON text (UTF-8)"}],
                ),
                status_code=422,
            )
        headers = exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(_body(str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal error; see the server log"), status_code=500)
