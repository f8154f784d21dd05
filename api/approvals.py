"""Approvals decided by the people they name (``/api/approvals``), and the groups of
approvers an owner's approvals name (``/api/groups``). The logic is the approval desk's
(``api/approval_desk.py``); groups are stored by ``store.approval_groups``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from api.approval_desk import ApprovalDesk
from api.approval_links import BadLink, Link, LinkSigner
from api.auth import Owner
from api.errors import ApiError
from api.schemas import ErrorBody, RequestBody
from node_handlers.approval import NAME_PATTERN
from store.approval_groups import ApprovalGroups, Group
from store.approval_notices import ApprovalNotices
from store.errors import Conflict

router = APIRouter(tags=["approvals"])

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {
        401: "No or an unknown bearer API key",
        403: "The caller is not an approver of this approval, or started the run and may not approve it",
        404: "No such approval or group (another owner's groups are not found either)",
        409: "The caller decided already, the approval is no longer waiting, or the group's name is taken",
        422: "The body does not fit: the issues name the field",
        503: "The database or Prefect is unavailable",
    }
    return {code: {"model": ErrorBody, "description": why[code]} for code in codes}


def get_desk(request: Request) -> ApprovalDesk:
    desk: ApprovalDesk = request.app.state.approval_desk
    return desk


def get_groups(request: Request) -> ApprovalGroups:
    groups: ApprovalGroups = request.app.state.approval_desk.groups
    return groups


DeskDep = Annotated[ApprovalDesk, Depends(get_desk)]
GroupsDep = Annotated[ApprovalGroups, Depends(get_groups)]


class DecisionBody(RequestBody):
    approved: bool = Field(description="Approve (true) or reject (false).")
    input: dict[str, Any] = Field(default_factory=dict, description="The approval form's other fields.")


class GroupBody(RequestBody):
    name: Name = Field(description="Unique among the owner's groups; approvals name it in approvers.groups.")
    members: list[Name] = Field(max_length=1000, description="Identities: the owner names of API keys.")


class GroupOut(BaseModel):
    id: str
    name: str
    members: list[str]
    created_at: datetime
    updated_at: datetime


def _group(group: Group) -> GroupOut:
    return GroupOut(
        id=group.id,
        name=group.name,
        members=list(group.members),
        created_at=group.created_at,
        updated_at=group.updated_at,
    )


@router.get("/api/approvals", responses=_errors(401, 503))
async def list_approvals(identity: Owner, desk: DeskDep) -> list[dict[str, Any]]:
    """The approvals waiting that the caller may decide and has not decided, whoever owns the
    run: each with its form, who decided so far and who is still awaited."""
    return await desk.pending(identity)


@router.get("/api/approvals/{approval_id}", responses=_errors(401, 404, 503))
async def get_approval(approval_id: str, identity: Owner, desk: DeskDep) -> dict[str, Any]:
    """A waiting approval, for its approvers and its run's owner: who decided so far and who
    is still awaited."""
    return await desk.get(identity, approval_id)


@router.post("/api/approvals/{approval_id}/decide", responses=_errors(401, 403, 404, 409, 422, 503))
async def decide_approval(approval_id: str, body: DecisionBody, identity: Owner, desk: DeskDep) -> dict[str, Any]:
    """Record the caller's decision: ``status`` is ``approved`` once ``required`` approvals are
    in, ``rejected`` at the first rejection, ``waiting`` while more are needed."""
    return await desk.decide(identity, approval_id, body.approved, body.input)


@router.post("/api/groups", status_code=201, response_model=GroupOut, responses=_errors(401, 409, 422, 503))
async def create_group(body: GroupBody, owner: Owner, groups: GroupsDep) -> GroupOut:
    return _group(await groups.create(owner, body.name, body.members))


@router.get("/api/groups", response_model=list[GroupOut], responses=_errors(401, 503))
async def list_groups(owner: Owner, groups: GroupsDep) -> list[GroupOut]:
    return [_group(g) for g in await groups.list(owner)]


@router.get("/api/groups/{group_id}", response_model=GroupOut, responses=_errors(401, 404, 503))
async def get_group(group_id: str, owner: Owner, groups: GroupsDep) -> GroupOut:
    return _group(await groups.get(owner, group_id))


@router.put("/api/groups/{group_id}", response_model=GroupOut, responses=_errors(401, 404, 409, 422, 503))
async def replace_group(group_id: str, body: GroupBody, owner: Owner, groups: GroupsDep) -> GroupOut:
    return _group(await groups.replace(owner, group_id, body.name, body.members))


@router.delete("/api/groups/{group_id}", status_code=204, responses=_errors(401, 404, 503))
async def delete_group(group_id: str, owner: Owner, groups: GroupsDep) -> Response:
    await groups.delete(owner, group_id)
    return Response(status_code=204)


# --- decision links: no API key, the link's token is the authority (api/approval_links.py) ----


class LinkBody(RequestBody):
    token: str = Field(max_length=2000, description="The token of the decision link (after '#').")


class LinkDecisionBody(LinkBody):
    nonce: str = Field(max_length=64, description="The page's nonce, from POST /api/approval-link.")
    approved: bool
    input: dict[str, Any] = Field(default_factory=dict)


def get_links(request: Request) -> LinkSigner:
    links: LinkSigner = request.app.state.approval_links
    return links


LinksDep = Annotated[LinkSigner, Depends(get_links)]


def _read_link(links: LinkSigner, token: str) -> Link:
    try:
        return links.read(token)
    except BadLink as exc:
        raise ApiError(401, str(exc)) from None


@router.post("/api/approval-link", responses=_errors(401, 404, 409, 422, 503))
async def open_link(body: LinkBody, request: Request, desk: DeskDep, links: LinksDep) -> dict[str, Any]:
    """What a decision link's page shows: the approval as its approver sees it, who the link
    decides as, and the page's nonce to send back with the decision."""
    link = _read_link(links, body.token)
    if await request.app.state.approval_notices.link_used(link.nonce):
        raise Conflict("this decision link has been used already")
    view = await desk.get(link.identity, link.approval_id)
    return view | {"as": link.identity, "nonce": links.page_nonce(link), "expires_at": link.expires_at}


@router.post("/api/approval-link/decide", responses=_errors(401, 403, 404, 409, 422, 503))
async def decide_by_link(body: LinkDecisionBody, request: Request, desk: DeskDep, links: LinksDep) -> dict[str, Any]:
    """Decide as the link's identity, once."""
    link = _read_link(links, body.token)
    if not links.checks_page_nonce(link, body.nonce):
        raise ApiError(403, "the page's nonce does not match this link: open the link again")
    notices: ApprovalNotices = request.app.state.approval_notices
    if await notices.link_used(link.nonce):
        raise Conflict("this decision link has been used already")
    answer = await desk.decide(link.identity, link.approval_id, body.approved, body.input)
    await notices.use_link(link.nonce, link.approval_id)
    return answer
