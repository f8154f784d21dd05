"""Command help as one paragraph a line, whatever the docstring's line breaks.

Typer's rich help keeps a docstring's single newlines, so a docstring wrapped at the
source's width printed in a table of another width broke sentences in two ("reused
while" / "its settings ..."). ``ReflowedGroup`` joins the lines of each paragraph of a
command's help (nested groups' commands too) when click looks the command up, for the
command list and for the command's own ``--help``; the terminal then wraps it once. Blank
lines still separate paragraphs, and lines that start a list item (``-``, ``*``) or are
indented keep their break.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING

from typer.core import TyperGroup

if TYPE_CHECKING:  # typer bundles its own click; these are its classes
    from typer._click.core import Command, Context

_KEEP_BREAK = re.compile(r"^(\s|[-*] )")


def reflowed(text: str) -> str:
    paragraphs = inspect.cleandoc(text).split("\n\n")
    joined = []
    for paragraph in paragraphs:
        lines = paragraph.split("\n")
        out = [lines[0]]
        for line in lines[1:]:
            if _KEEP_BREAK.match(line) or out[-1].startswith("\b"):
                out.append(line)
            else:
                out[-1] = f"{out[-1].rstrip()} {line.strip()}"
        joined.append("\n".join(out))
    return "\n\n".join(joined)


def reflow(command: Command) -> Command:
    if command.help:
        command.help = reflowed(command.help)
    for child in getattr(command, "commands", {}).values():  # a group's commands
        reflow(child)
    return command


class ReflowedGroup(TyperGroup):
    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        return reflow(command) if command is not None else None
