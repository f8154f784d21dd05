"""``flowmaestro serve`` warns when the online workers of its pool run with other settings
than the workers it starts (``deployments.settings_fingerprint``): a worker left running
with an old egress allow list or model URL takes some of the pool's runs and fails them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deployments.settings_fingerprint import disagreement, fingerprint_of

FIRST_CHECK_S = 5.0
CHECK_EVERY_S = 30.0


async def online_workers(pool: str) -> list[str]:
    """The names of the pool's workers Prefect sees online (none when the pool is not there yet)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            workers = await client.read_workers_for_work_pool(pool)
        except ObjectNotFound:
            return []
    return [w.name for w in workers if w.status == WorkerStatus.ONLINE]


def differing(pool: str, expected: str, names: list[str]) -> str | None:
    """The warning for the workers of ``names`` whose settings differ, or None."""
    others = disagreement(names, expected)
    if not others:
        return None
    shown = ", ".join(f"{name!r} ({'settings:' + (fingerprint_of(name) or '?')})" for name in others)
    return (
        f"Warning: workers of pool {pool!r} run with other settings than this serve's "
        f"(settings:{expected}): {shown}. They take runs of this pool too, and may run them "
        "differently (egress allow list, model URL, secrets): stop them, or start them with "
        "the same FLOWMAESTRO_* settings."
    )


@contextmanager
def watching(
    pool: str,
    expected: str,
    log: Callable[[str], None],
    *,
    first_s: float = FIRST_CHECK_S,
    every_s: float = CHECK_EVERY_S,
) -> Iterator[None]:
    """Check the pool's workers ``first_s`` after start then every ``every_s`` in a thread,
    for the block; each different set of disagreeing workers is reported once."""
    stop = threading.Event()

    def run() -> None:
        reported: set[str] = set()
        wait = first_s
        while not stop.wait(wait):
            wait = every_s
            try:
                warning = differing(pool, expected, asyncio.run(online_workers(pool)))
            except Exception as exc:  # Prefect busy or down: the next check tries again
                log(f"could not read the workers of pool {pool!r}: {exc}")
                continue
            if warning is not None and warning not in reported:
                reported.add(warning)
                log(warning)

    thread = threading.Thread(target=run, name="pool-settings", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
