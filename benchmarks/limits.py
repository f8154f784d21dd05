"""What one node's ``concurrency`` slot costs: acquiring and releasing it on the Prefect
server (``flows.node_limits.PrefectNodeLimits.held``), uncontended, against no limit.

Usage::

    python -m benchmarks.limits [--reps 200] [--quick]

Measured in one process against the Prefect server of ``PREFECT_API_URL`` (else the embedded
one): the first use of a key (the limit created on the server, then a slot), then ``--reps``
warm acquisitions of one slot each held for nothing and released, sequentially; the same
loop with no limit (an empty ``held``) is the baseline. A rate limit's slot is one request
too (its limit decays; nothing to release), measured with a decay fast enough never to wait.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from benchmarks._common import loadavg, prepare_prefect


async def _timed(reps: int, once: object) -> list[float]:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await once()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return times


def _line(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    p50, mean = statistics.median(times), statistics.fmean(times)
    return f"{name:<34} n={len(times):<4} p50 {p50:7.2f} ms   p90 {p90:7.2f} ms   mean {mean:7.2f} ms"


async def main(reps: int) -> None:
    from prefect import flow

    # Inside a flow run, as nodes take their slots: Prefect's concurrency calls then share the
    # run's API client (outside one, each acquisition and release opens a client of its own).
    await flow(name="limits-benchmark", persist_result=False)(measure)(reps)


async def measure(reps: int) -> None:
    from flows.node_limits import PrefectNodeLimits, resolved_limit

    limits = PrefectNodeLimits()
    key = f"bench-{uuid.uuid4().hex[:8]}"
    concurrency = resolved_limit("concurrency", "bench", key, 1)
    rate = resolved_limit("rate_limit", "bench", key, 600_000)  # 10,000 a second: never waits here

    def never(_limit: object) -> None:
        raise AssertionError("an uncontended slot waited")

    async def no_limit() -> None:
        async with limits.held((), on_waiting=never):
            pass

    entered: list[float] = []
    left: list[float] = []

    async def slot() -> None:
        held = limits.held((concurrency,), on_waiting=never)
        started = time.perf_counter()
        await held.__aenter__()
        middle = time.perf_counter()
        await held.__aexit__(None, None, None)
        entered.append((middle - started) * 1000)
        left.append((time.perf_counter() - middle) * 1000)

    async def rate_slot() -> None:
        async with limits.held((rate,), on_waiting=never):
            pass

    started = time.perf_counter()
    await slot()
    first = (time.perf_counter() - started) * 1000
    await rate_slot()
    for warm_up in (no_limit, slot, rate_slot):
        await _timed(5, warm_up)
    baseline = await _timed(reps, no_limit)
    entered.clear()
    left.clear()
    slots = await _timed(reps, slot)
    rates = await _timed(reps, rate_slot)
    print(f"load average {loadavg()}")
    print(f"first use of a key (limit created, one slot): {first:.1f} ms")
    print(_line("no limit", baseline))
    print(_line("concurrency slot (acquire+release)", slots))
    print(_line("  of which acquire", entered))
    print(_line("  of which release", left))
    print(_line("rate-limit slot", rates))
    print(
        f"one concurrency slot costs {statistics.median(slots) - statistics.median(baseline):.2f} ms "
        f"(p50, over no limit); one rate-limit slot {statistics.median(rates) - statistics.median(baseline):.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 repetitions")
    args = parser.parse_args()
    prepare_prefect()
    asyncio.run(main(20 if args.quick else args.reps))
