"""Templates to start a workflow from: the bundled library (``api.template_library``) and
the owner's own, saved from a version of one of their workflows. Instantiating one saves
a new workflow (and first the workflows it runs, for a bundled template that brings them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.auth import Owner
from api.bundles import HistoryDep, Incoming, create_workflows
from api.deps import CompilerDep, RunsDep, WorkflowsDep
from api.library_schemas import InstantiateBody, Instantiated, TemplateBody, TemplateOut, TemplateSummary
from api.schemas import ErrorBody
from api.template_library import CHILD_PREFIX, Template, bundled, bundled_template
from store.errors import NotFound
from store.library import OwnerTemplate, OwnerTemplates

router = APIRouter(prefix="/api/templates", tags=["templates"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 503)}


def get_owner_templates(request: Request) -> OwnerTemplates:
    return OwnerTemplates(request.app.state.sessions)


OwnerTemplatesDep = Annotated[OwnerTemplates, Depends(get_owner_templates)]


def _of_owner(row: OwnerTemplate) -> Template:
    return Template(
        id=row.id,
        name=row.name,
        description=row.description,
        category=row.category,
        canvas=row.canvas,
        source="owner",
    )


def _summary(template: Template) -> TemplateSummary:
    return TemplateSummary(
        id=template.id,
        name=template.name,
        description=template.description,
        category=template.category,
        tags=list(template.tags),
        source=template.source,
        needs=template.needs(),
    )


def _full(template: Template) -> TemplateOut:
    return TemplateOut(
        **_summary(template).model_dump(),
        canvas=template.canvas,
        children=template.children,
        suggested=template.suggested,
    )


async def _find(owner: str, template_id: str, mine: OwnerTemplates) -> Template:
    try:
        return bundled_template(template_id)
    except NotFound:
        return _of_owner(await mine.get(owner, template_id))


@router.get("", response_model=list[TemplateSummary], responses=ERRORS)
async def list_templates(
    owner: Owner,
    mine: OwnerTemplatesDep,
    category: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200, description="In the name, description or tags.")] = None,
) -> list[TemplateSummary]:
    """The bundled library, then the owner's own templates, filtered."""
    found = [t for t in bundled() if t.matches(category, q)]
    found += [_of_owner(row) for row in await mine.list(owner, category=category, q=q)]
    return [_summary(t) for t in found]


@router.get("/{template_id}", response_model=TemplateOut, responses=ERRORS)
async def read_template(template_id: str, owner: Owner, mine: OwnerTemplatesDep) -> TemplateOut:
    """The template with its canvas and what it needs (inputs, credentials, providers)."""
    return _full(await _find(owner, template_id, mine))


@router.post("", status_code=201, response_model=TemplateOut, responses=ERRORS)
async def create_template(
    body: TemplateBody, owner: Owner, mine: OwnerTemplatesDep, workflows: WorkflowsDep
) -> TemplateOut:
    """A template of the owner's, from a version of one of their workflows (the latest when
    ``version`` is absent). Its sub-workflow references stay the workflows' ids."""
    saved = await workflows.version(owner, body.workflow_id, body.version)
    row = await mine.create(
        owner,
        name=body.name,
        description=body.description,
        category=body.category,
        canvas=saved.canvas,
        workflow_id=saved.workflow_id,
        version=saved.version,
    )
    return _full(_of_owner(row))


@router.post("/{template_id}/instantiate", status_code=201, response_model=Instantiated, responses=ERRORS)
async def instantiate_template(
    template_id: str,
    body: InstantiateBody,
    owner: Owner,
    mine: OwnerTemplatesDep,
    runs: RunsDep,
    compiler: CompilerDep,
    history: HistoryDep,
) -> Instantiated:
    """A new workflow from the template (named ``name``, else the template canvas's name:
    409 when that name is taken), with the workflows it runs saved first, named
    ``<name>: <child>``; all or none."""
    template = await _find(owner, template_id, mine)
    # The children are named after the new workflow, so a template can be used more than once.
    main_name = body.name or str(template.canvas.get("name") or template.id)
    incoming = [
        Incoming(
            key=CHILD_PREFIX + key, canvases=((canvas, None),), name=f"{main_name}: {key}"[:200], where=f"child {key}"
        )
        for key, canvas in template.children.items()
    ]
    incoming.append(Incoming(key=template.id, canvases=((template.canvas, None),), name=body.name, where="template"))
    created = await create_workflows(owner, incoming, runs=runs, compiler=compiler, history=history, via="template")
    main = created[-1].saved
    return Instantiated(**main.model_dump(), children=[c.saved for c in created[:-1]])
