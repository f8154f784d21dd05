"""Code nodes on a real worker (``flowmaestro serve``'s, tests/conftest.py ``served``): a run of
escape attempts ends with each attempt a node error, while a run beside it and a run after it
complete, and the worker's secret and API stay out of reach (issue 23). The attempts one by
one, through the handler: tests/test_code_node.py."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import httpx

from tests.support import canvas, node, save_and_execute, wait_final

SNOOP = """
import os, socket
def main(inputs):
    found = []
    texts = [repr(dict(os.environ))]
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                texts.append(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))
            except OSError:
                pass
    if any('FLOWMAESTRO' in text or 'PREFECT' in text for text in texts):
        found.append('environment')
    try:
        socket.create_connection((inputs['host'], inputs['port']), timeout=2).close()
        found.append('api')
    except OSError:
        pass
    if found:
        return found
    raise LookupError('no environment of the worker, no way to its API')
"""


def _hostile_canvas(host: str, port: int) -> dict:
    escapes = {
        "bomb": {"language": "python", "code": "import os\ndef main(i):\n    while True:\n        os.fork()"},
        "hog": {"language": "javascript", "code": "function main() { return Buffer.alloc(4 * 2**30).length }"},
        "spin": {"language": "python", "code": "def main(i):\n    while True:\n        pass", "timeout_s": 1},
        "flood": {"language": "python", "code": "def main(i):\n    while True:\n        print('x' * 10000)"},
        "snoop": {"language": "python", "code": SNOOP, "inputs": {"host": host, "port": port}},
    }
    nodes = [node("start", "start")]
    edges = []
    for name, data in escapes.items():
        nodes += [node(name, "code", data=data), node(f"caught_{name}", data={"output": f"{name} failed"})]
        edges += [("start", name), (name, f"caught_{name}", "error")]
    return canvas(nodes, edges, name="code-escapes")


def _friendly_canvas(name: str) -> dict:
    return canvas(
        [
            node("start", "start"),
            node(
                "py",
                "code",
                data={
                    "language": "python",
                    "code": "def main(inputs):\n    return {'n': inputs['n'] * 2}",
                    "inputs": {"n": "{{ inputs.n }}"},
                },
            ),
            node(
                "js",
                "code",
                data={
                    "language": "javascript",
                    "code": "async function main(inputs) { return inputs.n + 1 }",
                    "inputs": {"n": "{{ py.n }}"},
                },
            ),
            node("end", "end", data={"output": "{{ js }}"}),
        ],
        [("start", "py"), ("py", "js"), ("js", "end")],
        name=name,
        inputs={"n": {"type": "integer"}},
    )


async def test_escapes_on_a_real_worker_fail_their_nodes_and_harm_no_run(served):
    api = urlsplit(served.base)
    async with httpx.AsyncClient(
        base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"}, timeout=60
    ) as client:
        hostile_id, beside_id = await asyncio.gather(
            save_and_execute(client, _hostile_canvas(api.hostname or "127.0.0.1", api.port or 80)),
            save_and_execute(client, _friendly_canvas("code-beside"), {"n": 20}),
        )
        hostile, beside = await asyncio.gather(
            wait_final(client, hostile_id, timeout=240), wait_final(client, beside_id, timeout=240)
        )
        after = await wait_final(
            client, await save_and_execute(client, _friendly_canvas("code-after"), {"n": 1}), timeout=240
        )

    assert beside["status"] == "completed" and beside["output"] == 41, beside
    assert after["status"] == "completed" and after["output"] == 3, after
    assert hostile["status"] == "completed", hostile  # each failure took its error edge
    nodes = hostile["nodes"]
    types = {name: nodes[name]["error"]["type"] for name in ("bomb", "hog", "spin", "flood", "snoop")}
    assert types["bomb"] in {"BlockingIOError", "timeout"}, nodes["bomb"]
    assert types == {
        "bomb": types["bomb"],
        "hog": "memory_limit",
        "spin": "timeout",
        "flood": "output_limit",
        "snoop": "LookupError",
    }, types
    assert [nodes[f"caught_{name}"]["output"] for name in types] == [f"{name} failed" for name in types]
    assert served.secret not in json.dumps(hostile)
