"""Typed dependencies of the routes: the collaborators the app built at startup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.compiling import CanvasCompiler
from api.runs import RunService
from api.schedule_service import ScheduleService
from api.webhook_service import WebhookService
from node_handlers.registry import HandlerRegistry
from store.queries import Workflows


def get_runs(request: Request) -> RunService:
    return request.app.state.runs


def get_workflows(request: Request) -> Workflows:
    return request.app.state.runs.workflows


def get_registry(request: Request) -> HandlerRegistry:
    return request.app.state.runs.registry


def get_compiler(request: Request) -> CanvasCompiler:
    return request.app.state.runs.compiler


RunsDep = Annotated[RunService, Depends(get_runs)]
CompilerDep = Annotated[CanvasCompiler, Depends(get_compiler)]
WorkflowsDep = Annotated[Workflows, Depends(get_workflows)]
RegistryDep = Annotated[HandlerRegistry, Depends(get_registry)]


def get_schedules(request: Request) -> ScheduleService:
    return request.app.state.schedules


def get_webhooks(request: Request) -> WebhookService:
    return request.app.state.webhooks


SchedulesDep = Annotated[ScheduleService, Depends(get_schedules)]
WebhooksDep = Annotated[WebhookService, Depends(get_webhooks)]
