"""Export and import of workflows as bundles, and the one way the library creates several
workflows at once (an import, a template with the workflows it runs).

A bundle holds every version of each workflow, its schedules and its webhooks without
their secrets (a webhook's secret, a Stripe or Slack signing secret, is never exported: the
import makes new ones and shows them once). References between the bundle's workflows
(sub-workflow nodes, agents' workflow tools) name the exporting instance's ids; the import
gives every workflow a new id and rewrites them. Every version is compiled before anything
is written, then all the workflows and versions are created in one transaction: an import
that fails leaves nothing. Deployments, schedules and webhooks follow the commit; one that
Prefect refuses is a warning naming it, the workflows stay.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import TypeAdapter, ValidationError

from api.auth import Owner
from api.compiling import CanvasCompiler
from api.deps import CompilerDep, RunsDep, SchedulesDep, WebhooksDep, WorkflowsDep
from api.library_schemas import (
    Bundle,
    BundleSchedule,
    BundleVersion,
    BundleWebhook,
    BundleWorkflow,
    ImportBody,
    Imported,
    ImportedWebhook,
    ImportedWorkflow,
)
from api.runs import RunService
from api.schedule_service import ScheduleService
from api.schemas import ErrorBody, IssueOut, WorkflowSaved
from api.webhook_schemes import InputMapping, Verification
from api.webhook_service import WebhookService
from api.workflow_metadata import CatalogDep
from api.workflows import _saved
from builder.compiler import CompileResult
from builder.workflow_refs import remap_workflow_refs, workflow_refs
from deployments.schedules import Timing
from store.database import utcnow
from store.errors import DomainError, Invalid
from store.library import NewVersion, NewWorkflow, WorkflowHistory
from store.queries import SavedVersion
from store.workflow_meta import WorkflowCatalog

log = logging.getLogger("flowmaestro.api.bundles")
router = APIRouter(prefix="/api/workflows", tags=["workflows"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 503)}
SECRET_WORDS = ("secret", "password", "token", "key")


def get_history(request: Request) -> WorkflowHistory:
    return WorkflowHistory(request.app.state.sessions)


HistoryDep = Annotated[WorkflowHistory, Depends(get_history)]


@dataclass(frozen=True)
class Incoming:
    """A workflow to create: ``key`` is what references to it say (its id in a bundle,
    ``template:<key>`` in a template), ``canvases`` its versions in order."""

    key: str
    canvases: tuple[tuple[dict[str, Any], datetime | None], ...]
    name: str | None = None
    where: str = ""
    """How an error names it (``body.workflows[0]``)."""
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Created:
    incoming: Incoming
    workflow: NewWorkflow
    plan_hashes: tuple[str, ...]
    saved: WorkflowSaved


async def create_workflows(
    owner: str,
    incoming: list[Incoming],
    *,
    runs: RunService,
    compiler: CanvasCompiler,
    history: WorkflowHistory,
    via: str = "import",
) -> list[Created]:
    """Compile every version (422 naming the workflow and version), create everything in one
    transaction (audited as made ``via`` an import or a template), then each workflow's
    deployment (``api.workflows._saved``: a Prefect that is down is a warning). A deployment
    Prefect refuses deletes them all again."""
    ids = {item.key: str(uuid.uuid4()) for item in incoming}
    prepared: list[tuple[Incoming, NewWorkflow, list[CompileResult]]] = []
    for item in incoming:
        versions, results = [], []
        for number, (canvas, created_at) in enumerate(item.canvases, start=1):
            document = remap_workflow_refs(canvas, ids)
            if item.name is not None:
                document["name"] = item.name
            result = await _compiled(compiler, document, f"{item.where or item.key} version {number}")
            assert result.plan is not None
            versions.append(NewVersion(document, result.plan.hash, created_at))
            results.append(result)
        latest = results[-1].plan
        assert latest is not None
        made = NewWorkflow(latest.name, tuple(versions), ids[item.key], item.description, item.tags)
        prepared.append((item, made, results))
    await history.create_all(owner, [workflow for _, workflow, _ in prepared], via=via)
    created = []
    try:
        for item, workflow, results in prepared:
            number = len(workflow.versions)
            latest_version = workflow.versions[-1]
            saved = SavedVersion(
                workflow.id, owner, workflow.name, number, number, latest_version.canvas, latest_version.plan_hash
            )
            for version_number, result in enumerate(results[:-1], start=1):
                assert result.plan is not None
                compiler.remember(
                    SavedVersion(workflow.id, owner, workflow.name, version_number, number, {}, ""), result.plan
                )
            answer = await _saved(saved, results[-1], runs)
            created.append(Created(item, workflow, tuple(v.plan_hash for v in workflow.versions), answer))
    except Exception:
        for _, workflow, _ in prepared:
            await runs.workflows.delete(owner, workflow.id)
        raise
    return created


async def _compiled(compiler: CanvasCompiler, canvas: dict[str, Any], what: str) -> CompileResult:
    try:
        return await compiler.valid(canvas)
    except Invalid as exc:
        raise Invalid(f"{what}: {exc.message}", exc.issues) from None


@router.get("/{workflow_id}/export", response_model=Bundle, responses=ERRORS)
async def export_workflow(
    workflow_id: str,
    owner: Owner,
    workflows: WorkflowsDep,
    history: HistoryDep,
    schedules: SchedulesDep,
    webhooks: WebhooksDep,
    catalog: CatalogDep,
) -> Bundle:
    """The workflow as a bundle: every version, its schedules, its webhooks (names,
    verification scheme, input mapping: never a secret) and its metadata. Reads the
    schedules from Prefect: 503 when Prefect is down."""
    return Bundle(
        exported_at=utcnow(),
        workflows=[await exported(owner, workflow_id, workflows, history, catalog, schedules, webhooks)],
    )


async def exported(
    owner: str,
    workflow_id: str,
    workflows: WorkflowsDep,
    history: WorkflowHistory,
    catalog: WorkflowCatalog,
    schedules: ScheduleService,
    webhooks: WebhookService,
) -> BundleWorkflow:
    workflow = await workflows.get(owner, workflow_id)
    versions = await history.versions(owner, workflow_id)
    metadata: dict[str, Any] = {"created_at": workflow.created_at.isoformat(), "latest_version": len(versions)}
    meta = await catalog.get(owner, workflow_id)
    metadata |= {"description": meta.description, "tags": list(meta.tags), "status": meta.status}
    return BundleWorkflow(
        id=workflow.id,
        name=workflow.name,
        metadata=metadata,
        versions=[
            BundleVersion(version=v.version, created_at=v.created_at, plan_hash=v.plan_hash, canvas=v.canvas)
            for v in versions
        ],
        schedules=[
            BundleSchedule(
                cron=view.schedule.timing.cron,
                interval_s=view.schedule.timing.interval_s,
                rrule=view.schedule.timing.rrule,
                timezone=view.schedule.timing.timezone,
                inputs=dict(view.schedule.inputs),
                active=view.schedule.active,
                overlap=view.overlap,
            )
            for view in await schedules.list(owner, workflow_id)
        ],
        webhooks=[
            BundleWebhook(
                name=hook.name,
                verification=_without_secrets(dict(hook.verification)) if hook.verification else None,
                inputs_map=dict(hook.inputs_map) if hook.inputs_map else None,
            )
            for hook in await webhooks.list(owner, workflow_id)
        ],
    )


def _without_secrets(options: dict[str, Any]) -> dict[str, Any]:
    """A verification scheme's options without any that could hold a secret (the schemes
    keep theirs sealed apart, this is a second guard)."""
    return {k: v for k, v in options.items() if not any(word in k.lower() for word in SECRET_WORDS)}


@router.post("/import", status_code=201, response_model=Imported, responses=ERRORS)
async def import_workflows(
    body: ImportBody,
    owner: Owner,
    runs: RunsDep,
    compiler: CompilerDep,
    history: HistoryDep,
    schedules: SchedulesDep,
    webhooks: WebhooksDep,
) -> Imported:
    """New workflows from a bundle (``GET /api/workflows/{id}/export``, ``flowmaestro export``),
    all or none: every version compiles (else 422 naming the workflow and version), no name is
    taken (else 409 naming it; ``name`` renames a bundle of one workflow), then they are
    created in one transaction, references between them rewritten to their new ids. Their
    schedules and webhooks follow (webhooks with new secrets, shown once)."""
    if body.name is not None and len(body.workflows) != 1:
        raise Invalid(
            "name renames a bundle of one workflow only",
            [{"code": "name_for_many", "field": "body.name", "message": "give each workflow's name in the bundle"}],
        )
    _refuse_duplicates(body.workflows)
    incoming = [
        Incoming(
            key=w.id,
            canvases=tuple((v.canvas, v.created_at) for v in sorted(w.versions, key=lambda v: v.version)),
            name=body.name,
            where=f"body.workflows[{i}] ({w.name})",
            # Its description and tags come along; its status does not: an import starts active.
            description=str(w.metadata.get("description") or ""),
            tags=tuple(str(t) for t in w.metadata.get("tags") or ()),
        )
        for i, w in enumerate(body.workflows)
    ]
    created = await create_workflows(owner, incoming, runs=runs, compiler=compiler, history=history)
    warnings: list[IssueOut] = [w for c in created for w in c.saved.warnings]
    known = {w.id for w in body.workflows}
    answers = []
    for source, made in zip(body.workflows, created):
        for ref in {r for v in source.versions for r in workflow_refs(v.canvas)} - known:
            warnings.append(
                _warning("reference_outside_bundle", f"{source.name}: runs workflow {ref}, not in the bundle")
            )
        exported_hashes = [v.plan_hash for v in sorted(source.versions, key=lambda v: v.version)]
        if any(a and a != b for a, b in zip(exported_hashes, made.plan_hashes)):
            warnings.append(
                _warning("plan_changed", f"{source.name}: a version's plan differs from the exported one's")
            )
        scheduled = 0
        for schedule in source.schedules:
            try:
                timing = Timing(
                    cron=schedule.cron, interval_s=schedule.interval_s, rrule=schedule.rrule, timezone=schedule.timezone
                )
                await schedules.create(
                    owner, made.workflow.id, timing, schedule.inputs, schedule.active, schedule.overlap
                )
                scheduled += 1
            except DomainError as exc:
                warnings.append(_warning("schedule_not_imported", f"{source.name}: a schedule: {exc.message}"))
        hooks = []
        for hook in source.webhooks:
            try:
                verification = (
                    TypeAdapter(Verification).validate_python(hook.verification) if hook.verification else None
                )
                inputs = InputMapping.model_validate(hook.inputs_map) if hook.inputs_map else None
            except ValidationError as exc:
                warnings.append(_warning("webhook_not_imported", f"{source.name}: webhook {hook.name}: {exc}"))
                continue
            new = await webhooks.create(owner, made.workflow.id, hook.name, verification=verification, inputs=inputs)
            assert new.secret is not None
            hooks.append(ImportedWebhook(id=new.id, name=new.name, url=new.url, secret=new.secret))
            if verification is not None and verification.scheme in ("stripe", "slack"):
                warnings.append(
                    _warning(
                        "webhook_secret_new",
                        f"{source.name}: webhook {hook.name} has a new secret: set the sender's own with a rotation",
                    )
                )
        answers.append(
            ImportedWorkflow(
                id=made.workflow.id,
                source_id=source.id,
                name=made.workflow.name,
                latest_version=len(made.plan_hashes),
                plan_hashes=list(made.plan_hashes),
                schedules=scheduled,
                webhooks=hooks,
            )
        )
    first = answers[0]
    return Imported(id=first.id, name=first.name, version=first.latest_version, workflows=answers, warnings=warnings)


def _refuse_duplicates(workflows: list[BundleWorkflow]) -> None:
    ids = [w.id for w in workflows]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise Invalid(
            f"the bundle has workflow id {', '.join(twice)} more than once",
            [{"code": "duplicate_id", "field": "body.workflows", "message": f"id {i} appears twice"} for i in twice],
        )
    for i, workflow in enumerate(workflows):
        numbers = sorted(v.version for v in workflow.versions)
        if numbers != list(range(1, len(numbers) + 1)):
            raise Invalid(
                f"workflow {workflow.name}: versions must be numbered 1 to {len(numbers)}",
                [
                    {
                        "code": "version_numbers",
                        "field": f"body.workflows[{i}].versions",
                        "message": f"numbered {numbers}",
                    }
                ],
            )


def _warning(code: str, message: str) -> IssueOut:
    return IssueOut(code=code, severity="warning", message=message)
