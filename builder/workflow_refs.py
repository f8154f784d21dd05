"""The saved workflows a canvas runs by id: ``subworkflow`` nodes' ``data.workflow`` and
agent nodes' workflow tools (``data.tools[].workflow``). An export names them by the ids of
the instance it came from, a template by ``template:<child>``; both are rewritten to the
new workflows' ids when those are created (``remap_workflow_refs``). Pure: no I/O."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any


def _slots(canvas: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dict of ``canvas`` holding a workflow reference under ``workflow``."""
    for node in canvas.get("nodes") or []:
        if not isinstance(node, dict) or not isinstance(node.get("data"), dict):
            continue
        data = node["data"]
        if node.get("type") == "subworkflow" and isinstance(data.get("workflow"), str):
            yield data
        if node.get("type") == "agent" and isinstance(data.get("tools"), list):
            for tool in data["tools"]:
                if isinstance(tool, dict) and tool.get("type") == "workflow" and isinstance(tool.get("workflow"), str):
                    yield tool


def workflow_refs(canvas: Mapping[str, Any]) -> list[str]:
    """The workflow references of ``canvas``, in canvas order, each once."""
    found: list[str] = []
    for slot in _slots(canvas):
        if slot["workflow"] not in found:
            found.append(slot["workflow"])
    return found


def remap_workflow_refs(canvas: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``canvas`` whose references found in ``mapping`` name their new ids; the
    others are left as they are. A pinned ``version`` stays: the new workflow has the same
    versions, numbered alike."""
    remapped = copy.deepcopy(dict(canvas))
    for slot in _slots(remapped):
        slot["workflow"] = mapping.get(slot["workflow"], slot["workflow"])
    return remapped
