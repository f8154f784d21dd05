"""The code node and its sandbox, through the handler and the in-process engine: what code
may do, and the escapes it must not make (issue 23). Each escape ends in a node error while
the process that runs the node (a worker's, here the test's) carries on and the next
execution works. tests/test_code_node_worker.py runs them on a real worker."""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import os
import sys
import threading
import time

import ifaddr
import pytest

from builder.compiler import compile_canvas
from flows.engine import Execution
from node_handlers.code import CodeConfig
from node_handlers.registry import HandlerRegistry, builtin_handlers
from node_handlers.services import HandlerServices
from node_handlers.settings import HandlerSettings
from tests.code_support import run_code, sandbox_processes
from tests.support import canvas, node

SECRET = "code-test-secret-7f3a9c"
SLOW = pytest.mark.services
"""The tests that take seconds (a timeout, 100 MB, 200 sandboxes) run in ``make test``, not
``make test-fast``: they need no service, but every test here starts processes."""


@pytest.fixture(scope="module")
async def services():
    """One installation's services for the module (its warm pool too), closed at the end:
    then no sandbox process of the module may be left."""
    own = HandlerServices(HandlerSettings())
    problem = await own.code_sandbox.problem()
    assert problem is None, f"the sandbox cannot be set up on this machine: {problem} (.ci/run installs bubblewrap)"
    yield own
    await own.close()
    assert await _no_sandbox_left(), f"sandbox processes left behind: {sandbox_processes()}"


async def _no_sandbox_left(*spare_owners: HandlerServices, timeout: float = 15.0) -> bool:
    """No sandbox process is left (but the spares of ``spare_owners``), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while sandbox_processes(*spare_owners):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _still_works(services: HandlerServices) -> None:
    """The next execution, after an escape attempt, runs normally."""
    found = await run_code(services, "python", "def main(inputs):\n    return inputs['n'] + 1", {"n": 41})
    assert found.error is None and found.output == 42


# --- what code nodes do ------------------------------------------------------------------------


async def test_python_returns_json_and_prints_log_lines(services):
    code = "def main(inputs):\n    print('summing', len(inputs['values']))\n    return {'total': sum(inputs['values'])}"
    found = await run_code(services, "python", code, {"values": [1, 2, 3.5]})
    assert found.error is None
    assert found.output == {"total": 6.5}
    assert found.events == [("log:lines", {"lines": ["summing 3"], "truncated": False, "attempt": 1})]


async def test_javascript_async_main_and_console_lines(services):
    code = (
        "async function main(inputs) {\n"
        "  console.log('one');\n"
        "  console.error('two');\n"
        "  await new Promise((done) => setTimeout(done, 10));\n"
        "  return { items: inputs.items.map((x) => x * 2), none: null };\n"
        "}"
    )
    found = await run_code(services, "javascript", code, {"items": [1, 2]})
    assert found.error is None
    assert found.output == {"items": [2, 4], "none": None}
    assert found.logs == ["one", "two"]


@pytest.mark.parametrize(
    ("language", "code", "error_type", "message", "line"),
    [
        ("python", "def main(inputs):\n    x = 1\n    raise ValueError('no good')", "ValueError", "no good", 3),
        ("python", "def main(inputs):\n    return inputs['missing']", "KeyError", "'missing'", 2),
        ("python", "x = 1", "NameError", "the code defines no function main(inputs)", None),
        ("python", "def main(inputs):\n    return {1, 2}", "TypeError", "main returned a value that is not JSON", None),
        (
            "javascript",
            "function main(inputs) {\n  return null.x;\n}",
            "TypeError",
            "Cannot read properties of null",
            2,
        ),
        ("javascript", "async function main() {\n\n  throw new RangeError('too far');\n}", "RangeError", "too far", 3),
        ("javascript", "function main( {", "SyntaxError", "", 1),
    ],
)
async def test_an_exception_is_a_node_error_with_type_message_and_line(
    services, language, code, error_type, message, line
):
    found = await run_code(services, language, code)
    assert found.error is not None
    assert found.error.error_type == error_type
    assert message in found.error.message
    assert found.error.details.get("line") == line


def test_a_python_syntax_error_is_refused_when_the_canvas_is_compiled():
    raw = canvas(
        [
            node("start", "start"),
            node("bad", "code", data={"language": "python", "code": "def main(inputs)\n  return 1"}),
        ],
        [("start", "bad")],
    )
    result = compile_canvas(raw, HandlerRegistry(builtin_handlers(HandlerSettings())))
    problems = [(issue.node_id, issue.message) for issue in result.errors]
    assert len(problems) == 1
    assert problems[0][0] == "bad" and "Python syntax error in code at line 1" in problems[0][1]


def test_python_code_checked_in_two_threads_at_once_parses_in_both():
    """The API checks canvases in two threads. CPython 3.11 shares the AST constructor's
    recursion depth between threads (python/cpython#106905): here a garbage collection inside
    the first thread's parse hands over to the second, which parses a whole canvas's code before
    the first goes on (unguarded, the first failed with a SystemError every time)."""
    code = "def main(inputs):\n    return 1\n" + "".join(
        f"def f{i}(a):\n    return [x * {i} for x in a]\n" for i in range(200)
    )
    errors: list[Exception] = []
    second_may_start, second_done = threading.Event(), threading.Event()
    handed_over: list[bool] = []

    def check() -> None:
        try:
            CodeConfig.model_validate({"language": "python", "code": code})
        except Exception as exc:
            errors.append(exc)

    def second_check() -> None:
        second_may_start.wait(60)
        check()
        second_done.set()

    def inside_the_first_parse(phase: str, info: dict) -> None:
        if (
            phase == "start"
            and not handed_over
            and threading.current_thread() is first
            and sys._getframe(1).f_code is ast.parse.__code__
        ):
            handed_over.append(True)
            second_may_start.set()
            second_done.wait(1)  # guarded, the second waits for the first: it goes on after 1 s

    first, second = threading.Thread(target=check), threading.Thread(target=second_check)
    gc.callbacks.append(inside_the_first_parse)
    try:
        second.start()
        first.start()
        first.join()
        second_may_start.set()
        second.join()
    finally:
        gc.callbacks.remove(inside_the_first_parse)
    assert handed_over, "no garbage collection happened inside the first parse"
    assert second_done.is_set() and not errors, errors


async def _run_canvas(raw, services, inputs=None):
    registry = HandlerRegistry(builtin_handlers(services.settings))
    result = compile_canvas(raw, registry)
    assert not result.errors, result.errors
    execution = Execution(result.plan, registry, run_id="run-1", inputs=inputs or {}, services=services)
    events = []
    execution.bus.subscribe(events.append)
    record = await execution.run()
    return record.result(), events


async def test_in_a_run_inputs_are_templates_and_code_is_taken_as_written(services):
    code = (
        "def main(inputs):\n"
        "    # {% not jinja either\n"
        "    print('{{ not a template }}')\n"
        "    return {'sum': sum(inputs['values']), 'text': '{{ x }}'}"
    )
    raw = canvas(
        [
            node("start", "start"),
            node("fetch", data={"output": {"items": "{{ inputs.values }}"}}),
            node("score", "code", data={"language": "python", "code": code, "inputs": {"values": "{{ fetch.items }}"}}),
            node("end", "end", data={"output": "{{ score.sum }}"}),
        ],
        [("start", "fetch"), ("fetch", "score"), ("score", "end")],
        inputs={"values": {"type": "array"}},
    )
    result, events = await _run_canvas(raw, services, {"values": [2, 3]})
    assert result["status"] == "completed", result
    assert result["output"] == 5
    assert result["nodes"]["score"]["output"] == {"sum": 5, "text": "{{ x }}"}
    logs = [e for e in events if e.type == "log:lines"]
    assert [(e.node_id, e.data["lines"]) for e in logs] == [("score", ["{{ not a template }}"])]


async def test_a_failing_code_node_takes_its_error_edge(services):
    raw = canvas(
        [
            node("start", "start"),
            node(
                "risky", "code", data={"language": "javascript", "code": "function main() { throw new Error('boom') }"}
            ),
            node("fallback", data={"output": "handled"}),
        ],
        [("start", "risky"), ("risky", "fallback", "error")],
    )
    result, _ = await _run_canvas(raw, services)
    assert result["status"] == "completed", result
    assert result["nodes"]["fallback"]["output"] == "handled"
    assert result["nodes"]["risky"]["error"]["type"] == "Error"
    assert "boom" in result["nodes"]["risky"]["error"]["message"]


@SLOW
async def test_a_timeout_is_retried_and_a_node_timeout_kills_the_sandbox(services):
    own = HandlerServices(HandlerSettings(code_warm_pool=0))  # no spare: every sandbox left is one too many
    spin = "def main(i):\n    while True:\n        pass"
    raw = canvas(
        [
            node("start", "start"),
            node(
                "retried",
                "code",
                data={"language": "python", "code": spin, "timeout_s": 0.5},
                retry={"max_attempts": 2, "initial_delay_s": 0, "retry_on": ["timeout"]},
            ),
            node(
                "cut",
                "code",
                data={"language": "javascript", "code": "function main() { for (;;) {} }", "timeout_s": 30},
                timeout_s=1,
            ),
            node("after_retried", data={"output": "ok"}),
            node("after_cut", data={"output": "ok"}),
        ],
        [("start", "retried"), ("start", "cut"), ("retried", "after_retried", "error"), ("cut", "after_cut", "error")],
    )
    started = time.monotonic()
    try:
        result, events = await _run_canvas(raw, own)
        assert await _no_sandbox_left(services), f"left behind: {sandbox_processes(services)}"
    finally:
        await own.close()
    assert result["status"] == "completed", result
    retried, cut = result["nodes"]["retried"], result["nodes"]["cut"]
    assert retried["error"]["type"] == "timeout" and retried["attempts"] == 2, retried
    assert [e.data["attempt"] for e in events if e.type == "node:retrying" and e.node_id == "retried"] == [1]
    assert cut["error"]["type"] == "Timeout" and "timed out after 1 s" in cut["error"]["message"], cut
    assert time.monotonic() - started < 20  # the node's 1 s, not the code's 30 s


async def test_limits_above_the_installation_s_are_refused(services):
    found = await run_code(services, "python", "def main(i):\n    return 1", timeout_s=61)
    assert found.error is not None and found.error.error_type == "ConfigError"
    assert "FLOWMAESTRO_CODE_MAX_TIMEOUT_S" in found.error.message
    found = await run_code(services, "python", "def main(i):\n    return 1", memory_mb=4096)
    assert found.error is not None and "data.memory_mb" in found.error.message


async def test_without_bubblewrap_code_nodes_fail_saying_why():
    missing = HandlerServices(HandlerSettings(code_bwrap="/nonexistent/bwrap"))
    try:
        found = await run_code(missing, "python", "def main(i):\n    return 1")
    finally:
        await missing.close()
    assert found.error is not None and found.error.error_type == "SandboxUnavailable"
    assert "bubblewrap" in found.error.message and "FLOWMAESTRO_CODE_SANDBOX=off" in found.error.message


@SLOW
async def test_with_the_sandbox_off_code_runs_with_limits_and_an_empty_environment(monkeypatch):
    monkeypatch.setenv("FLOWMAESTRO_SECRET_CODETEST", SECRET)
    unsafe = HandlerServices(HandlerSettings(code_sandbox="off"))
    try:
        found = await run_code(unsafe, "python", "import os\ndef main(i):\n    return sorted(os.environ)")
        looping = await run_code(unsafe, "python", "def main(i):\n    while True: pass", timeout_s=1)
    finally:
        await unsafe.close()
    assert found.error is None
    assert {"HOME", "LANG", "PATH"} <= set(found.output) <= {"HOME", "LANG", "LC_CTYPE", "PATH"}, found.output
    assert looping.error is not None and looping.error.error_type == "timeout"


# --- escapes -----------------------------------------------------------------------------------


@pytest.fixture
async def listener():
    """A TCP server on every address of this machine, counting the connections it gets."""
    accepted = []

    async def accept(reader, writer):
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, accepted
    server.close()
    await server.wait_closed()


def _machine_addresses() -> list[str]:
    found = ["127.0.0.1"]
    for adapter in ifaddr.get_adapters():
        found += [ip.ip for ip in adapter.ips if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    return found


async def test_python_cannot_open_a_socket_or_resolve_a_name(services, listener):
    port, accepted = listener
    code = (
        "import socket\n"
        "def main(inputs):\n"
        "    failures = []\n"
        "    for address in inputs['addresses']:\n"
        "        try:\n"
        "            socket.create_connection((address, inputs['port']), timeout=2).close()\n"
        "        except OSError as exc:\n"
        "            failures.append(str(exc))\n"
        "    try:\n"
        "        socket.getaddrinfo('localhost', 80)\n"
        "    except OSError as exc:\n"
        "        failures.append(str(exc))\n"
        "    raise ConnectionError('; '.join(failures))\n"
    )
    addresses = _machine_addresses()
    found = await run_code(services, "python", code, {"addresses": addresses, "port": port})
    assert found.error is not None and found.error.error_type == "ConnectionError"
    assert found.error.message.count(";") == len(addresses), found.error.message
    *connections, lookup = found.error.message.split(": ", 1)[1].split("; ")
    # 127.0.0.1 is the sandbox's own loopback (nothing listens); the machine's other addresses do not exist
    assert all("refused" in text or "unreachable" in text for text in connections), connections
    assert "name resolution" in lookup
    assert accepted == []
    await _still_works(services)


async def test_javascript_cannot_open_a_socket_or_resolve_a_name(services, listener):
    port, accepted = listener
    code = (
        "const net = require('net');\n"
        "const dns = require('dns').promises;\n"
        "async function main(inputs) {\n"
        "  const failures = [];\n"
        "  await new Promise((ok) => {\n"
        "    const socket = net.connect(inputs.port, '127.0.0.1');\n"
        "    socket.on('connect', () => ok());\n"
        "    socket.on('error', (e) => { failures.push(e.code); ok(); });\n"
        "  });\n"
        "  try { await dns.lookup('localhost'); } catch (e) { failures.push(e.code); }\n"
        "  const answer = await fetch('http://127.0.0.1:' + inputs.port).catch((e) => 'fetch ' + e.message);\n"
        "  failures.push(String(answer));\n"
        "  throw new Error(failures.join(' '));\n"
        "}"
    )
    found = await run_code(services, "javascript", code, {"port": port})
    assert found.error is not None and found.error.error_type == "Error"
    # The sandbox's network namespace has only a loopback of its own, where nothing listens.
    assert found.error.message.endswith("ECONNREFUSED EAI_AGAIN fetch fetch failed"), found.error.message
    assert accepted == []


async def test_the_worker_s_home_files_are_not_there(services, tmp_path):
    home = os.environ["FLOWMAESTRO_HOME"]
    os.makedirs(home, exist_ok=True)
    secret_file = os.path.join(home, "code-test-secret")
    with open(secret_file, "w") as out:
        out.write(SECRET)
    python = await run_code(
        services, "python", "def main(inputs):\n    return open(inputs['path']).read()", {"path": secret_file}
    )
    javascript = await run_code(
        services,
        "javascript",
        "function main(i) { return require('fs').readFileSync(i.path, 'utf8') }",
        {"path": secret_file},
    )
    listing = await run_code(services, "python", "import os\ndef main(i):\n    return sorted(os.listdir('/'))")
    assert python.error is not None and python.error.error_type == "FileNotFoundError"
    assert javascript.error is not None and "ENOENT" in javascript.error.message
    assert {"dev", "proc", "tmp", "usr"} <= set(listing.output)
    assert set(listing.output) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    for found in (python, javascript, listing):
        assert SECRET not in found.everything()


async def test_no_environment_of_the_worker_is_visible(services, monkeypatch):
    monkeypatch.setenv("FLOWMAESTRO_SECRET_CODETEST", SECRET)
    code = (
        "import os\n"
        "def main(inputs):\n"
        "    seen = [repr(dict(os.environ))]\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit():\n"
        "            try:\n"
        "                seen.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    if any(inputs['secret'] in text for text in seen):\n"
        "        return 'escaped'\n"
        "    raise LookupError(f'{len(seen)} environments read, no secret: {sorted(os.environ)}')\n"
    )
    # The secret goes in as an input to look for: an escape would return 'escaped'.
    found = await run_code(services, "python", code, {"secret": SECRET})
    assert found.error is not None and found.error.error_type == "LookupError", found.everything()
    assert found.error.message.endswith("no secret: ['HOME', 'LANG', 'PATH', 'PWD']")
    js = await run_code(
        services,
        "javascript",
        "function main() { return [Object.keys(process.env), require('fs').readFileSync('/proc/1/environ', 'utf8')] }",
    )
    assert js.error is None and SECRET not in js.everything()
    assert sorted(js.output[0]) == ["HOME", "LANG", "PATH", "PWD"] and "FLOWMAESTRO" not in js.output[1]


async def test_writes_outside_the_scratch_directory_fail(services, tmp_path):
    target = tmp_path / "written-by-code"
    code = (
        "def main(inputs):\n"
        "    with open('/tmp/scratch.txt', 'w') as out:\n"
        "        out.write('fine')\n"
        "    failures = []\n"
        "    for path in ['/evil', '/usr/evil', '/proc/evil', '/dev/evil', inputs['host_path']]:\n"
        "        try:\n"
        "            with open(path, 'w') as out:\n"
        "                out.write('x')\n"
        "        except OSError as exc:\n"
        "            failures.append(exc.errno)\n"
        "    raise PermissionError(f'{open(\"/tmp/scratch.txt\").read()}: {len(failures)} refused')\n"
    )
    found = await run_code(services, "python", code, {"host_path": str(target)})
    assert found.error is not None and found.error.error_type == "PermissionError"
    assert found.error.message.endswith(": fine: 5 refused")
    assert not target.exists()
    scratch_again = await run_code(services, "python", "import os\ndef main(i):\n    return os.listdir('/tmp')")
    assert scratch_again.output == []  # nothing kept from one execution to the next


async def test_a_symlink_out_of_scratch_leads_nowhere(services, tmp_path):
    secret_file = tmp_path / "host-secret"
    secret_file.write_text(SECRET)
    code = (
        "import os\n"
        "def main(inputs):\n"
        "    os.symlink(inputs['path'], '/tmp/link')\n"
        "    os.symlink('/proc/1/root/' + inputs['path'], '/tmp/link2')\n"
        "    for link in ('/tmp/link', '/tmp/link2'):\n"
        "        try:\n"
        "            return open(link).read()\n"
        "        except FileNotFoundError:\n"
        "            pass\n"
        "    raise FileNotFoundError('both links lead nowhere')\n"
    )
    found = await run_code(services, "python", code, {"path": str(secret_file)})
    assert found.error is not None and found.error.message.endswith(": both links lead nowhere")
    assert SECRET not in found.everything()


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import os\ndef main(i):\n    while True:\n        os.fork()"),
        (
            "javascript",
            "const { spawn } = require('child_process');\n"
            "function main() {\n"
            "  for (;;) {\n"
            "    const child = spawn('/bin/sh', ['-c', ':(){ :|:& };:']);\n"
            "    if (!child.pid) throw new Error('no more processes');\n"
            "  }\n"
            "}",
        ),
    ],
)
async def test_a_fork_bomb_is_contained(services, language, code):
    started = time.monotonic()
    found = await run_code(services, language, code, timeout_s=5)
    assert found.error is not None, found.output
    assert found.error.error_type in {"BlockingIOError", "Error", "timeout"}, found.error.message
    assert time.monotonic() - started < 30
    await _still_works(services)


async def test_a_4_gb_allocation_is_a_memory_limit(services):
    python = await run_code(services, "python", "def main(i):\n    return len(bytearray(4 * 2**30))")
    buffer = await run_code(services, "javascript", "function main() { return Buffer.alloc(4 * 2**30).length }")
    heap = await run_code(
        services, "javascript", "function main() { const a = []; for (;;) a.push(new Array(100000).fill(1.5)); }"
    )
    for found in (python, buffer, heap):
        assert found.error is not None and found.error.error_type == "memory_limit", found.everything()
        assert "memory_mb (256 MB)" in found.error.message
    await _still_works(services)


@SLOW
@pytest.mark.parametrize(
    ("language", "code"),
    [("python", "def main(i):\n    while True:\n        pass"), ("javascript", "function main() { for (;;) {} }")],
)
async def test_a_busy_loop_past_timeout_s_is_a_timeout(services, language, code):
    started = time.monotonic()
    found = await run_code(services, language, code, timeout_s=1)
    elapsed = time.monotonic() - started
    assert found.error is not None and found.error.error_type == "timeout"
    assert found.error.retry_class == "timeout"
    assert "timeout_s (1 s)" in found.error.message
    assert 1 <= elapsed < 10


@SLOW
@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys\ndef main(i):\n    while True:\n        sys.stdout.write('x' * 100000)"),
        ("python", "def main(i):\n    return 'x' * (100 * 2**20)"),
        ("javascript", "function main() { for (;;) process.stdout.write('x'.repeat(100000)) }"),
        ("javascript", "function main() { return 'x'.repeat(100 * 2**20) }"),
    ],
)
async def test_100_mb_of_output_is_an_output_limit(services, language, code):
    found = await run_code(services, language, code, memory_mb=1024)
    assert found.error is not None and found.error.error_type == "output_limit", found.everything()[:300]
    assert "more than 1000000 bytes" in found.error.message


async def test_ctypes_os_system_and_subprocess_stay_inside(services, listener):
    port, accepted = listener
    home = os.environ["FLOWMAESTRO_HOME"]
    code = (
        "import ctypes, os, subprocess\n"
        "def main(inputs):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    results = {\n"
        "        'mount': libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "        'unshare': libc.unshare(0x40000000),\n"  # CLONE_NEWNS
        "        'setuid': libc.setuid(0),\n"
        "        'system': os.system('ls ' + inputs['home'] + ' > /dev/null 2>&1'),\n"
        "        'subprocess': subprocess.run(['/usr/bin/python3', '-c', inputs['connect']]).returncode,\n"
        "    }\n"
        "    if any(value == 0 for value in results.values()):\n"
        "        return results\n"
        "    raise PermissionError(json_dumps(results))\n"
        "json_dumps = __import__('json').dumps\n"
    )
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    found = await run_code(services, "python", code, {"home": home, "connect": connect})
    assert found.error is not None and found.error.error_type == "PermissionError", found.output
    results = json.loads(found.error.message.split(": ", 1)[1])
    assert results["mount"] == -1 and results["unshare"] == -1 and results["setuid"] == -1
    assert results["system"] != 0 and results["subprocess"] != 0
    assert accepted == []


@SLOW
async def test_killing_every_process_it_can_see_harms_no_other_execution(services):
    """Sandboxes run as the same user: each sees, and can signal, only its own processes."""
    slow = asyncio.ensure_future(
        run_code(services, "python", "import time\ndef main(i):\n    time.sleep(2)\n    return 'slept'", timeout_s=20)
    )
    await asyncio.sleep(0.5)  # the first one is running (a spare starts at once)
    code = (
        "import os, signal, time\n"
        "def main(i):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(30)\n"
        "    seen = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "    os.kill(-1, signal.SIGKILL)\n"  # every process it may signal but itself
        "    os.kill(1, signal.SIGKILL)\n"  # its namespace's first process ignores it
        "    time.sleep(0.2)\n"
        "    return seen\n"
    )
    killer = await run_code(services, "python", code)
    assert killer.error is None and killer.output == [1, 2, 3], killer.everything()
    slept = await slow
    assert slept.error is None and slept.output == "slept"
    await _still_works(services)


async def test_child_process_tricks_stay_inside(services, listener):
    port, accepted = listener
    home = os.environ["FLOWMAESTRO_HOME"]
    code = (
        "const cp = require('child_process');\n"
        "function main(inputs) {\n"
        "  const seen = [];\n"
        "  const commands = [`cat ${inputs.home}/*`, 'cat /proc/1/environ; env',\n"
        "                    `exec 3<>/dev/tcp/127.0.0.1/${inputs.port}`, 'ls /work /root /etc 2>&1'];\n"
        "  for (const command of commands) {\n"
        "    try { seen.push(cp.execSync(command, { shell: '/bin/sh', stdio: 'pipe' }).toString()); }\n"
        "    catch (e) { seen.push('failed ' + e.status); }\n"
        "  }\n"
        "  throw new Error(JSON.stringify(seen));\n"
        "}"
    )
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "code-test-secret"), "w") as out:
        out.write(SECRET)
    found = await run_code(services, "javascript", code, {"home": home, "port": port})
    assert found.error is not None and found.error.error_type == "Error"
    seen = json.loads(found.error.message.split(": ", 1)[1])
    assert seen[0].startswith("failed") and seen[2].startswith("failed") and seen[3].startswith("failed")
    assert sorted(seen[1].split()) == ["HOME=/tmp", "LANG=C.UTF-8", "PATH=/usr/bin:/bin", "PWD=/tmp", "SHLVL=1"] or (
        "FLOWMAESTRO" not in seen[1]
    )
    assert SECRET not in found.everything() and accepted == []


@SLOW
async def test_200_code_nodes_in_a_parallel_of_20_leave_no_process_behind(services):
    own = HandlerServices(HandlerSettings())
    code = "def main(inputs):\n    return inputs['item'] * 2"
    raw = canvas(
        [
            node("start", "start"),
            node("par", "parallel", data={"mode": "count", "count": 200, "max_concurrency": 20}),
            node(
                "double",
                "code",
                parentId="par",
                data={"language": "python", "code": code, "inputs": {"item": "{{ parallel.index }}"}},
            ),
        ],
        [("start", "par")],
    )
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sum(1 for _, name in sandbox_processes(services) if name == "bwrap"))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    try:
        result, _ = await _run_canvas(raw, own)
    finally:
        watcher.cancel()
        await own.close()
    assert result["status"] == "completed", result.get("error")
    assert result["nodes"]["par"]["output"]["results"] == [index * 2 for index in range(200)]
    # Each sandbox is two bwrap processes (its parent, the PID namespace's first); spares add 2 each.
    assert 0 < peak <= 2 * (20 + own.settings.code_warm_pool)
    assert await _no_sandbox_left(services), f"left behind: {sandbox_processes(services)}"
