"""Follow a FlowMaestro run live: node states and LLM tokens as they happen.

    python examples/follow_run.py EXECUTION_ID [--api http://127.0.0.1:8000] [--key KEY]

Reconnects after a dropped connection with Last-Event-ID, so nothing is missed or
printed twice. Needs httpx and httpx-sse (installed with the dev extras).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx
from httpx_sse import connect_sse


def follow(api: str, key: str, execution_id: str) -> int:
    last_id: str | None = None
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            with httpx.Client(base_url=api, timeout=httpx.Timeout(None, connect=10)) as client:
                with connect_sse(client, "GET", f"/api/executions/{execution_id}/stream", headers=headers) as source:
                    source.response.raise_for_status()
                    for event in source.iter_sse():
                        if not event.data:
                            continue  # a heartbeat
                        last_id = event.id
                        data = json.loads(event.data)
                        if event.event == "stream:chunk":
                            print(data["text"], end="", flush=True)
                        elif event.event == "stream:done":
                            print()
                        elif event.event.startswith("node:"):
                            where = "/".join(map(str, data.get("path") or []))
                            print(f"[{event.id}] {event.event:<15} {data['node_id']}{' @' + where if where else ''}")
                        else:
                            print(f"[{event.id}] {event.event}")
                        if event.event in ("execution:completed", "execution:failed", "execution:cancelled"):
                            return 0 if event.event == "execution:completed" else 1
        except httpx.HTTPStatusError as exc:
            print(f"error: {exc.response.status_code} {exc.response.text}", file=sys.stderr)
            return 2
        except httpx.TransportError as exc:
            print(f"connection lost ({exc}); reconnecting after event {last_id}", file=sys.stderr)
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("execution_id")
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--key", default=os.environ.get("FLOWMAESTRO_API_KEY", ""))
    args = parser.parse_args()
    return follow(args.api, args.key, args.execution_id)


if __name__ == "__main__":
    sys.exit(main())
