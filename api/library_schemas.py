"""Bodies and answers of the workflow library's routes: versions, diff, rollback,
templates, export and import (``api.versions``, ``api.templates``, ``api.bundles``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import IssueOut, RequestBody, WorkflowSaved

BUNDLE_FORMAT: Literal["flowmaestro-bundle"] = "flowmaestro-bundle"
BUNDLE_FORMAT_VERSION: Literal[1] = 1


class VersionOut(BaseModel):
    version: int
    created_at: datetime
    created_by: str = Field(description="The owner whose key saved it.")
    plan_hash: str
    nodes: int = Field(description="How many nodes its canvas has.")


class FieldChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    path: str = Field(description="The field, e.g. data.prompt or data.tools[1].url; empty: the whole value.")
    from_: Any = Field(None, alias="from", description="Its value before; null when absent.")
    to: Any = Field(None, description="Its value after; null when absent.")


class ChangedItem(BaseModel):
    id: str
    changes: list[FieldChange]


class KeyedDiff(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[ChangedItem]


class CanvasDiff(BaseModel):
    """``to`` compared with ``from``; UI keys (positions, sizes, selection) are not changes."""

    from_version: int
    to_version: int
    nodes: KeyedDiff
    edges: KeyedDiff
    inputs: KeyedDiff
    variables: KeyedDiff
    settings: list[FieldChange]
    output: list[FieldChange]
    document: list[FieldChange] = Field(description="The canvas's name and description.")


class RollbackBody(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})
    version: int = Field(ge=1, description="The version whose canvas the new version takes.")


class TemplateSummary(BaseModel):
    id: str
    name: str
    description: str
    category: str
    tags: list[str]
    source: Literal["bundled", "owner"]
    needs: dict[str, Any] = Field(
        description="What to ask for before it runs: inputs (as declared), credentials ({name, type, "
        "description, used_by}), model providers, workflows it runs."
    )


class TemplateOut(TemplateSummary):
    canvas: dict[str, Any]
    children: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Workflows the canvas runs as template:<key>; instantiating saves them too.",
    )
    suggested: dict[str, Any] = Field(default_factory=dict, description="A schedule or webhook it suggests.")


class TemplateBody(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"workflow_id": "…", "name": "Our triage", "description": "…", "category": "support"}]
        },
    )
    workflow_id: str = Field(min_length=1, max_length=36)
    version: int | None = Field(None, ge=1, description="The latest when absent.")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    category: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")


class InstantiateBody(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "triage for team A"}]})
    name: str | None = Field(None, min_length=1, max_length=200, description="The template's canvas name when absent.")


class Instantiated(WorkflowSaved):
    children: list[WorkflowSaved] = Field(
        default_factory=list, description="The workflows of the template it runs, saved first."
    )


class BundleVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    created_at: datetime | None = None
    plan_hash: str | None = Field(None, description="As exported; the import compiles again and compares.")
    canvas: dict[str, Any]


class BundleSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str | None = None
    interval_s: float | None = None
    rrule: str | None = None
    timezone: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    active: bool = True
    overlap: Literal["allow", "skip", "queue"] = "allow"


class BundleWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    verification: dict[str, Any] | None = None
    inputs_map: dict[str, Any] | None = None


class BundleWorkflow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=36, description="Its id where it was exported; references use it.")
    name: str = Field(min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    versions: list[BundleVersion] = Field(min_length=1, max_length=10_000)
    schedules: list[BundleSchedule] = Field(default_factory=list, max_length=100)
    webhooks: list[BundleWebhook] = Field(default_factory=list, max_length=100)


class Bundle(BaseModel):
    """Workflows with every version, their schedules and webhooks (never a secret)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["flowmaestro-bundle"] = BUNDLE_FORMAT
    format_version: Literal[1] = BUNDLE_FORMAT_VERSION
    exported_at: datetime | None = None
    workflows: list[BundleWorkflow] = Field(min_length=1, max_length=1000)


class ImportBody(Bundle):
    name: str | None = Field(
        None, min_length=1, max_length=200, description="A new name, for a bundle of one workflow."
    )


class ImportedWebhook(BaseModel):
    id: str
    name: str
    url: str
    secret: str = Field(description="New: a webhook's secret is never exported. Shown once.")


class ImportedWorkflow(BaseModel):
    id: str
    source_id: str = Field(description="Its id in the bundle.")
    name: str
    latest_version: int
    plan_hashes: list[str] = Field(description="Each version's plan hash here, in order.")
    schedules: int = Field(0, description="Schedules created.")
    webhooks: list[ImportedWebhook] = Field(default_factory=list)


class Imported(BaseModel):
    id: str = Field(description="The first workflow of the bundle, made here.")
    name: str
    version: int
    workflows: list[ImportedWorkflow]
    warnings: list[IssueOut] = Field(default_factory=list)
