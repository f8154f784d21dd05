"""The ``code`` node: ``main(inputs)`` in Python or JavaScript, in the OS sandbox.

The node's ``inputs`` are templates resolved by the engine; ``code`` is taken as written
(``literal_keys``: a ``{{`` in code is code). The return value is the output; printed lines
are published as the node's ``log:lines`` event; an exception fails the node with its type,
message and line. Timeouts and the memory limit fail it with ``type`` ``timeout`` and
``memory_limit``. Where the sandbox is, and what it guarantees: ``node_handlers.sandbox``.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

from pydantic import Field, field_validator, model_validator

from builder.catalog import SOURCE_CODE, NodeConfig
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler
from node_handlers.sandbox import Language, SandboxLimits, SandboxUnavailable
from node_handlers.services import services_for

MAX_CODE_CHARS = 100_000
MAX_LOG_LINES = 1000
"""Most log lines one execution publishes (each already counted in the output limit)."""

_ONE_PARSE_AT_A_TIME = threading.Lock()
"""CPython 3.11 keeps the AST constructor's recursion depth in state the whole interpreter
shares (python/cpython#106905): a parse that another thread's parse interrupts (threads switch
in a finaliser the collector runs) fails with a SystemError, which would escape this config's
validation as a 500. The API checks canvases in two threads at once (``api.compiling``)."""


class CodeConfig(NodeConfig):
    language: Language = Field(description="python or javascript.")
    code: str = Field(
        min_length=1,
        max_length=MAX_CODE_CHARS,
        json_schema_extra={SOURCE_CODE: True},
        description="Source defining main(inputs) (JavaScript: sync or async); its return value (JSON) is the "
        "output. Taken as written, never as a template.",
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="What main receives; strings are templates ('{{ fetch.body.items }}')."
    )
    timeout_s: float = Field(10.0, gt=0, le=3600, description="CPU and wall-clock limit (type timeout).")
    memory_mb: int = Field(256, ge=16, le=65536, description="Memory limit in MB (type memory_limit).")

    @field_validator("code")
    @classmethod
    def _not_blank(cls, code: str) -> str:
        if not code.strip():
            raise ValueError("the code is empty: define a function main(inputs)")
        return code

    @model_validator(mode="after")
    def _python_parses(self) -> CodeConfig:
        """A Python syntax error is found when the canvas is saved, not when it runs."""
        if self.language == "python":
            try:
                with _ONE_PARSE_AT_A_TIME:
                    ast.parse(self.code, "<code>")
            except SyntaxError as exc:
                raise ValueError(f"Python syntax error in code at line {exc.lineno}: {exc.msg}") from None
            except (ValueError, RecursionError, MemoryError) as exc:
                raise ValueError(f"the Python code cannot be parsed: {type(exc).__name__}") from None
        return self


class CodeHandler(NodeHandler):
    type = "code"
    version = "1"
    label = "Code"
    category = "data"
    side_effects = False  # the sandbox reaches no network and no file outside its run
    description = "Runs main(inputs) in Python or JavaScript in a sandbox; output is its return value."
    Config = CodeConfig
    literal_keys = frozenset({"code"})

    async def run(self, config: CodeConfig, ctx: NodeContext) -> Completed:
        async with services_for(ctx.services) as services:
            sandbox = services.code_sandbox
            settings = services.settings
            self._check_limits(config, settings.code_max_timeout_s, settings.code_max_memory_mb)
            limits = SandboxLimits(
                timeout_s=config.timeout_s,
                memory_mb=config.memory_mb,
                max_output_bytes=settings.code_max_output_bytes,
                max_processes=settings.code_max_processes,
                scratch_mb=settings.code_scratch_mb,
            )
            try:
                outcome = await sandbox.run(config.language, config.code, config.inputs, limits)
            except SandboxUnavailable as exc:
                raise NodeError(
                    f"code nodes cannot run on this worker: {exc}. Install bubblewrap, or set "
                    "FLOWMAESTRO_CODE_SANDBOX=off to run code unsandboxed (unsafe: see docs/code.md)",
                    error_type="SandboxUnavailable",
                ) from None
        if outcome.logs:
            lines = list(outcome.logs[:MAX_LOG_LINES])
            ctx.emit(
                "log:lines", {"lines": lines, "truncated": len(outcome.logs) > MAX_LOG_LINES, "attempt": ctx.attempt}
            )
        if outcome.ok:
            return Completed(output=outcome.output)
        where = f" (line {outcome.line})" if outcome.line is not None else ""
        raise NodeError(
            f"{outcome.error_type}{where}: {outcome.message}" if outcome.message else f"{outcome.error_type}{where}",
            retry_class="timeout" if outcome.error_type == "timeout" else "error",
            error_type=outcome.error_type,
            details={"line": outcome.line} if outcome.line is not None else {},
        )

    @staticmethod
    def _check_limits(config: CodeConfig, max_timeout_s: float, max_memory_mb: int) -> None:
        if config.timeout_s > max_timeout_s:
            raise NodeError(
                f"data.timeout_s: {config.timeout_s:g} s is above this installation's limit "
                f"(FLOWMAESTRO_CODE_MAX_TIMEOUT_S={max_timeout_s:g})",
                error_type="ConfigError",
            )
        if config.memory_mb > max_memory_mb:
            raise NodeError(
                f"data.memory_mb: {config.memory_mb} is above this installation's limit "
                f"(FLOWMAESTRO_CODE_MAX_MEMORY_MB={max_memory_mb})",
                error_type="ConfigError",
            )


HANDLERS = [CodeHandler]
