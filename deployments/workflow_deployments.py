"""Every saved workflow is a Prefect deployment of the generic flow.

A deployment is what lets Prefect start a run of a workflow without FlowMaestro's API:
its UI's Run button, its schedules, automations. The deployment carries no canvas. Its
default parameters name the workflow (``workflow_id``, ``owner``) and the worker that picks
a run loads the version it names, or the latest one, from FlowMaestro's store. Versions
are immutable, so ``(workflow_id, version)`` says exactly what ran, in every run's
parameters, and a new version changes nothing on Prefect but the Run form (and the
description): parameters stay small however large the canvas.

The Run form is the deployment's parameter schema: one ``inputs`` object whose fields are
the workflow's declared inputs (type, description, default, required).

Each owner's deployments go to a work queue of their own in the pool (``owner-<slug>``)
whose concurrency limit is ``owner_max_runs``: Prefect counts the queue's runs in flight
(Pending, Running, Cancelling) and hands a worker no more of them, so an owner's extra
runs wait in Prefect, not in a worker slot, and one owner cannot take every slot of the
workers. Workers poll every queue of the pool, those created later included.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from flows.subworkflows import WORKFLOW_TAG  # one definition: child runs carry it too
from flows.tracing import TRACEPARENT_LABEL

FLOW_NAME = "flowmaestro"
"""The name of the generic flow (``flows.flow.run_workflow``)."""
WORKER_TYPE = "flowmaestro"
DEFAULT_POOL = "flowmaestro"
ENTRYPOINT = "flows/flow.py:run_workflow"
EXECUTION_TAG = "execution:{id}"
"""The tag of a flow run the API created for a run it accepted: its execution id."""


_UNSAFE_IN_DEPLOYMENT_NAMES = re.compile(r"[/%&<>?#\\\x00-\x1f\x7f]+")
"""What Prefect refuses in a deployment name (``prefect.types.names.BANNED_CHARACTERS``:
/ % & > <), and what would cut the URL its client reads a deployment by name from
(``/deployments/name/{flow}/{name}``, not quoted: ? and # end the path there, so the
deployment would never be found and each save would re-create it, dropping its schedules),
and control characters."""


def deployment_name(workflow_id: str, name: str) -> str:
    """The workflow's name made safe for Prefect and the start of its id: names are
    unique per owner, not across owners. Any display name is fine for a workflow
    (``R&D <report>``); its deployment is ``R-D -report- [1234abcd]``. Names without
    those characters map to themselves, so existing deployments keep theirs."""
    safe = _UNSAFE_IN_DEPLOYMENT_NAMES.sub("-", name).strip() or "workflow"
    return f"{safe[:150]} [{workflow_id[:8]}]"


def owner_queue(owner: str) -> str:
    """The work queue of an owner's runs: a readable slug, and a hash of the owner when
    the slug is not the owner itself (``a.b`` and ``a-b`` are two owners)."""
    slug = re.sub(r"[^a-z0-9]+", "-", owner.lower()).strip("-")[:40] or "owner"
    if slug != owner:
        slug = f"{slug}-{hashlib.sha256(owner.encode()).hexdigest()[:8]}"
    return f"owner-{slug}"


def parameter_schema(declared_inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The OpenAPI schema of the Run form: the declared inputs as the fields of ``inputs``."""
    properties: dict[str, Any] = {}
    for position, (name, spec) in enumerate(declared_inputs.items()):
        field: dict[str, Any] = {"title": name, "type": spec.get("type", "string"), "position": position}
        if spec.get("description"):
            field["description"] = spec["description"]
        if spec.get("default") is not None:
            field["default"] = spec["default"]
        properties[name] = field
    required = [name for name, spec in declared_inputs.items() if spec.get("required")]
    inputs: dict[str, Any] = {
        "title": "inputs",
        "type": "object",
        "position": 0,
        "description": "The workflow's inputs.",
        "properties": properties,
    }
    if required:
        inputs["required"] = required
    defaults = {name: field["default"] for name, field in properties.items() if "default" in field}
    if defaults:
        inputs["default"] = defaults
    return {
        "title": "Parameters",
        "type": "object",
        "properties": {"inputs": inputs},
        "required": ["inputs"] if required else [],
        "definitions": {},
    }


@dataclass(frozen=True)
class WorkflowDeployment:
    """What the deployment of a workflow is made from."""

    workflow_id: str
    owner: str
    name: str
    latest_version: int
    inputs: Mapping[str, Mapping[str, Any]]
    description: str | None = None


class WorkflowDeployments:
    """Creates, updates and removes the deployments of saved workflows, and starts their runs.

    Every call takes the Prefect client of the caller: the API keeps one for the process.
    """

    def __init__(self, pool: str = DEFAULT_POOL, owner_max_runs: int | None = None):
        """``owner_max_runs``: runs of one owner in flight at once (the concurrency limit of
        their work queue); None: no limit."""
        self.pool = pool
        self.owner_max_runs = owner_max_runs
        self._flow_id: UUID | None = None
        self._pool_ready = False
        self._queues_ready: set[str] = set()

    async def ensure(self, client: PrefectClient, workflow: WorkflowDeployment) -> UUID:
        """Create the deployment, or update the one there is.

        An existing deployment is PATCHed, never re-created: Prefect's create is an upsert
        that deletes every schedule of the deployment (and its future scheduled runs) and
        resets its concurrency limit, so a new version saved would silently drop the
        workflow's schedules and overlap policy."""
        flow_id = await self._generic_flow(client)
        await self._ensure_pool(client)
        queue = await self._ensure_owner_queue(client, workflow.owner)
        name = deployment_name(workflow.workflow_id, workflow.name)
        fields: dict[str, Any] = dict(
            version=str(workflow.latest_version),
            work_pool_name=self.pool,
            work_queue_name=queue,
            entrypoint=ENTRYPOINT,
            parameters={"workflow_id": workflow.workflow_id, "owner": workflow.owner},
            parameter_openapi_schema=parameter_schema(workflow.inputs),
            enforce_parameter_schema=False,
            tags=["flowmaestro", WORKFLOW_TAG.format(id=workflow.workflow_id)],
            description=workflow.description
            or f"FlowMaestro workflow {workflow.name!r} (version {workflow.latest_version} is the latest)",
        )
        existing = await self.find(client, workflow.workflow_id, workflow.name)
        if existing is not None:
            await client.update_deployment(existing, DeploymentUpdate(**fields))
            return existing
        return await client.create_deployment(flow_id=flow_id, name=name, **fields)

    async def find(self, client: PrefectClient, workflow_id: str, name: str) -> UUID | None:
        try:
            found = await client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(workflow_id, name)}")
        except ObjectNotFound:
            return None
        return found.id

    async def remove(self, client: PrefectClient, workflow_id: str, name: str) -> None:
        """Delete the deployment; its runs keep their history in Prefect."""
        deployment_id = await self.find(client, workflow_id, name)
        if deployment_id is not None:
            try:
                await client.delete_deployment(deployment_id)
            except ObjectNotFound:
                pass

    async def start(
        self,
        client: PrefectClient,
        deployment_id: UUID,
        *,
        workflow_id: str,
        name: str,
        version: int,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        idempotency_key: str | None = None,
        journal: str | None = None,
        traceparent: str | None = None,
        breakpoints: list[str] | None = None,
        execution_id: str | None = None,
    ) -> FlowRun:
        """Create a flow run of the deployment; a worker picks it up (Scheduled now).
        ``journal``: a journal the run starts from (a rerun's, seeded by the API).
        ``traceparent``: the parent of the run's span, as a label its worker reads (flows/tracing.py).
        ``breakpoints``: nodes the run pauses before (``flows.pauses``). ``execution_id``: the
        run's id as the API accepted it, which its worker uses as the run's id (its flow run
        id otherwise)."""
        parameters: dict[str, Any] = {"inputs": inputs, "version": version, "trigger": trigger}
        if execution_id is not None:
            parameters["execution_id"] = execution_id
        if journal is not None:
            parameters["journal"] = journal
        if breakpoints:
            parameters["breakpoints"] = list(breakpoints)
        tags = [
            "flowmaestro",
            WORKFLOW_TAG.format(id=workflow_id),
            f"version:{version}",
            f"trigger:{trigger.get('type', 'api')}",
        ]
        if execution_id is not None:  # the Prefect UI finds the run by its FlowMaestro id
            tags.append(EXECUTION_TAG.format(id=execution_id))
        return await client.create_flow_run_from_deployment(
            deployment_id,
            parameters=parameters,
            tags=tags,
            name=name,
            idempotency_key=idempotency_key,
            labels={TRACEPARENT_LABEL: traceparent} if traceparent else None,
        )

    async def _generic_flow(self, client: PrefectClient) -> UUID:
        if self._flow_id is None:
            self._flow_id = await client.create_flow_from_name(FLOW_NAME)
        return self._flow_id

    async def _ensure_pool(self, client: PrefectClient) -> None:
        if self._pool_ready:
            return
        try:
            await client.read_work_pool(self.pool)
        except ObjectNotFound:
            try:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=self.pool, type=WORKER_TYPE, description="FlowMaestro workers (flowmaestro worker)"
                    )
                )
            except ObjectAlreadyExists:
                pass  # another process created it meanwhile
        self._pool_ready = True

    async def _ensure_owner_queue(self, client: PrefectClient, owner: str) -> str:
        """The owner's work queue in the pool, with the limit of runs in flight (set again
        when the setting changed since the queue was made)."""
        name = owner_queue(owner)
        if name in self._queues_ready:
            return name
        try:
            queue = await client.read_work_queue_by_name(name, work_pool_name=self.pool)
        except ObjectNotFound:
            try:
                await client.create_work_queue(
                    name,
                    work_pool_name=self.pool,
                    concurrency_limit=self.owner_max_runs,
                    description=f"Runs of FlowMaestro owner {owner!r}: at most "
                    f"{self.owner_max_runs or 'any number'} in flight",
                )
                self._queues_ready.add(name)
                return name
            except ObjectAlreadyExists:  # another process created it meanwhile
                queue = await client.read_work_queue_by_name(name, work_pool_name=self.pool)
        if queue.concurrency_limit != self.owner_max_runs:
            await client.update_work_queue(queue.id, concurrency_limit=self.owner_max_runs)
        self._queues_ready.add(name)
        return name
