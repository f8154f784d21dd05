"""The raw-Prefect baseline of ``benchmarks/api.py``: a hand-written flow of five tiny tasks,
run by FlowMaestro's own worker (``deployments/worker.py``), so that what differs from a
FlowMaestro run is FlowMaestro (API, store, canvas, event log), not the worker.

Usage (``benchmarks/api.py`` starts it; the flow's deployment is the benchmark's to create)::

    python -m benchmarks.raw_prefect_worker --pool POOL [--limit 20] [--name NAME] [--poll-s 1]

It prints a line with "started" once the worker polls its pool, like ``flowmaestro worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect import flow, task

FLOW_NAME = "bench-raw-chain"
ENTRYPOINT = "benchmarks/raw_prefect_worker.py:chain"
STEPS = 5


@task
async def step(value: int) -> int:
    return value + 1


@flow(name=FLOW_NAME)
async def chain() -> int:
    """Five task runs one after the other, as the 5-node chain of the benchmark."""
    value = 0
    for _ in range(STEPS):
        value = await step(value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--name", default=None)
    parser.add_argument("--poll-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    from deployments.worker import run_worker

    asyncio.run(
        run_worker(
            chain,
            pool=args.pool,
            limit=args.limit,
            poll_s=args.poll_s,
            name=args.name,
            started=lambda line: print(line, flush=True),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
