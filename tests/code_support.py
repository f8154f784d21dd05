"""What the code node tests share: calling the handler on its own, and finding the sandbox
processes a test process left behind."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from node_handlers.base import NodeContext, NodeError
from node_handlers.code import CodeConfig, CodeHandler
from node_handlers.services import HandlerServices


@dataclass
class CodeRun:
    output: Any = None
    error: NodeError | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def logs(self) -> list[str]:
        return [line for kind, data in self.events if kind == "log:lines" for line in data["lines"]]

    def everything(self) -> str:
        """All the node let out: output, error and log lines (to look for a secret in)."""
        error = "" if self.error is None else f"{self.error.message} {self.error.details}"
        return f"{self.output!r} {error} {self.logs!r}"


async def run_code(services: HandlerServices, language: str, code: str, inputs: Any = None, **data: Any) -> CodeRun:
    """One execution of a code node, through the handler alone (no engine)."""
    found = CodeRun()
    ctx = NodeContext(
        "code1",
        (),
        "run-1",
        "wf",
        1,
        {},
        {},
        lambda kind, data: found.events.append((kind, dict(data))),
        services=services,
    )
    config = CodeConfig.model_validate({"language": language, "code": code, "inputs": inputs or {}, **data})
    try:
        found.output = (await CodeHandler().run(config, ctx)).output
    except NodeError as exc:
        found.error = exc
    return found


def descendants(root: int | None = None) -> list[tuple[int, str]]:
    """The live processes below ``root`` (this process): (pid, command name)."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue  # it ended meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parents[int(entry)] = int(fields[1])
        names[int(entry)] = name
    below = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor not in (0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor == root:
            below.append((pid, names[pid]))
    return below


SANDBOX_NAMES = frozenset({"bwrap", "python3", "node", "prlimit", "setpriv", "sh"})


def sandbox_processes(*spare_owners: HandlerServices) -> list[tuple[int, str]]:
    """Descendants of this process that are sandboxes or started inside one, but the spares
    (and what runs in them) of ``spare_owners``' warm pools."""
    spares = {pid for owner in spare_owners for pid in owner.code_sandbox.spare_pids()}
    inside = {pid for spare in spares for pid, _ in descendants(spare)}
    return [(pid, name) for pid, name in descendants() if name in SANDBOX_NAMES and pid not in spares | inside]
