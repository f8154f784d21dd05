"""The programs that run inside a code node's sandbox, one per language.

Each reads one request from stdin (``{"code", "inputs", "paths", "limits"}``; the Python
runner sets its own limits from it, before the code runs), calls the code's
``main(inputs)`` and writes one line to its result channel: ``RESULT_MARKER`` then JSON,
``{"ok": true, "output": ...}`` or ``{"ok": false, "type", "message", "line"}``. What the
code prints goes to stdout (its stderr too): the node's log lines. The result channel is
the process's original stderr; the marker tells the result apart from anything the code
writes there itself (it can only spoil its own result).

They are given to the interpreter on its command line (``-c``, ``-e``): the sandbox has no
file of FlowMaestro in it.
"""

from __future__ import annotations

RESULT_MARKER = "\x1eFLOWMAESTRO-RESULT "

PYTHON_RUNNER = r"""
import json, os, sys, traceback

def _line_of(exc):
    if isinstance(exc, SyntaxError) and exc.filename == "<code>":
        return exc.lineno
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == "<code>"]
    return lines[-1] if lines else None

def _limit(limits):
    # The process may have been started before its request (a warm pool): its limits are
    # set here, before any of the code runs. Lowering a limit needs no privilege.
    import math, resource
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime + limits["cpu_s"])
    for name, value in (
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_NPROC", limits["processes"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NOFILE", 64),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_CPU", cpu),
    ):
        which = getattr(resource, name)
        hard = resource.getrlimit(which)[1]
        unbounded = hard == resource.RLIM_INFINITY
        soft = value if unbounded else min(value, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later
        top = soft + 1 if name == "RLIMIT_CPU" and (unbounded or soft < hard) else soft
        resource.setrlimit(which, (soft, top))

def _run():
    data = sys.stdin.buffer.read()
    if not data:  # a spare of the warm pool whose worker went away
        return
    request = json.loads(data)
    _limit(request["limits"])
    result = os.fdopen(os.dup(2), "w", encoding="utf-8")
    os.dup2(1, 2)  # the code's stderr goes to its log lines
    sys.path.extend(request["paths"])
    try:
        scope = {"__name__": "__flowmaestro_code__"}
        exec(compile(request["code"], "<code>", "exec"), scope)
        main = scope.get("main")
        if not callable(main):
            raise NameError("the code defines no function main(inputs)")
        output = main(request["inputs"])
        try:
            text = json.dumps({"ok": True, "output": output}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"main returned a value that is not JSON: {exc}") from None
    except BaseException as exc:
        if not isinstance(exc, MemoryError):
            traceback.print_exc()
        text = json.dumps({"ok": False, "type": type(exc).__name__, "message": str(exc)[:2000], "line": _line_of(exc)})
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    # The log lines end before the result: the worker has both once the result is there,
    # even if the code left processes of its own behind (they die with the sandbox).
    os.close(1)
    os.close(2)
    result.write(MARKER + text + "\n")
    result.flush()
    os._exit(0)

_run()
""".replace("MARKER", repr(RESULT_MARKER))

JAVASCRIPT_RUNNER = r"""
"use strict";
const fs = require("fs");
const vm = require("vm");
const MARKER = MARKER_VALUE;
// Blocking, so that a loop printing without end fills the pipe (and meets the output limit)
// instead of Node.js's memory.
if (process.stdout._handle && process.stdout._handle.setBlocking) process.stdout._handle.setBlocking(true);
const toLog = (...args) => console.log(...args);
console.error = toLog; console.warn = toLog; console.info = toLog; console.debug = toLog;
process.stderr.write = process.stdout.write.bind(process.stdout);
function lineOf(error) {
  const found = /<code>:(\d+)/.exec(String(error && error.stack));
  return found ? Number(found[1]) : null;
}
let finished = false;
function write(text) {
  // Node.js makes its stdio pipes non-blocking: a long result is written in parts.
  const data = Buffer.from(text);
  let offset = 0;
  while (offset < data.length) {
    try { offset += fs.writeSync(2, data, offset); }
    catch (error) { if (error.code !== "EAGAIN") throw error; }
  }
}
function finish(text) {
  if (finished) return;
  finished = true;
  // The log lines end before the result: the worker has both once the result is there.
  try { fs.closeSync(1); } catch (error) { /* already closed */ }
  write(MARKER + text + "\n");
}
function fail(error) {
  const isError = error instanceof Error;
  if (isError && error.stack) console.log(error.stack);
  finish(JSON.stringify({
    ok: false,
    type: isError ? error.name : typeof error,
    message: String(isError ? error.message : error).slice(0, 2000),
    // a parse error found at the line the runner appends is one of the code's last line
    line: lineOf(error) === null ? null : Math.min(lineOf(error), codeLines),
  }));
}
let codeLines = 1;
// An error thrown in a callback or a promise nobody awaits ends the execution too.
process.on("uncaughtException", (error) => { fail(error); process.exit(0); });
process.on("unhandledRejection", (error) => { fail(error); process.exit(0); });
function readRequest() {
  const parts = [];
  const buffer = Buffer.alloc(65536);
  for (;;) {
    let size;
    try { size = fs.readSync(0, buffer, 0, buffer.length, null); }
    catch (error) { if (error.code === "EAGAIN") continue; throw error; }
    if (size === 0) return Buffer.concat(parts).toString("utf8");
    parts.push(Buffer.from(buffer.subarray(0, size)));
  }
}
async function run() {
  const request = JSON.parse(readRequest());
  codeLines = request.code.split("\n").length;
  try {
    const body = request.code + "\n;return typeof main === 'function' ? main : undefined;";
    const load = vm.compileFunction(body, ["require", "console"], { filename: "<code>" });
    const main = load(require, console);
    if (typeof main !== "function") throw new ReferenceError("the code defines no function main(inputs)");
    const output = await main(request.inputs);
    let text;
    try { text = JSON.stringify(output === undefined ? null : output); }
    catch (error) { throw new TypeError("main returned a value that is not JSON: " + error.message); }
    finish('{"ok":true,"output":' + text + "}");
  } catch (error) {
    fail(error);
  }
}
run().then(() => process.exit(0));
""".replace("MARKER_VALUE", repr(RESULT_MARKER).replace("'", '"'))
