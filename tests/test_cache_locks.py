"""The cache locks under concurrency in one event loop, as a worker runs them: the waiter
waits without blocking the loop, and gets the lock once the holder releases it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from flows.cache_locks import FileCacheLocks, RedisCacheLocks


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.services)])
def locks(request, tmp_path):
    if request.param == "file":
        return FileCacheLocks(tmp_path / "locks")
    return RedisCacheLocks("redis://127.0.0.1:6379/0", prefix=f"test-cache-lock-{uuid.uuid4().hex}:")


async def test_a_waiter_gets_the_lock_after_the_holder_releases_it_and_the_loop_keeps_running(locks):
    key = "node-key"
    assert await locks.aacquire_lock(key, "first")
    assert locks.is_locked(key) and locks.is_lock_holder(key, "first") and not locks.is_lock_holder(key, "second")
    order: list[str] = []
    ticks = 0

    async def second() -> None:
        assert await locks.aacquire_lock(key, "second", acquire_timeout=10)
        order.append("second acquired")

    async def ticker() -> None:
        nonlocal ticks
        while "second acquired" not in order:
            ticks += 1
            await asyncio.sleep(0.01)

    waiter, clock = asyncio.create_task(second()), asyncio.create_task(ticker())
    async with asyncio.timeout(60):  # the loop turned ten times while the waiter waits
        while ticks < 10:
            await asyncio.sleep(0.01)
    assert order == [] and not waiter.done(), "the waiter must wait without blocking the event loop"
    order.append("first released")
    locks.release_lock(key, "first")
    await asyncio.wait_for(waiter, 5)
    await clock
    assert order == ["first released", "second acquired"] and locks.is_lock_holder(key, "second")
    locks.release_lock(key, "second")
    assert not locks.is_locked(key)


async def test_a_lock_times_out_for_a_waiter_and_expires_for_a_dead_holder(locks):
    assert await locks.aacquire_lock("k", "holder")
    assert not await locks.aacquire_lock("k", "other", acquire_timeout=0.2)
    locks.release_lock("k", "other")  # not the holder: nothing happens
    assert locks.is_lock_holder("k", "holder")
    locks.release_lock("k", "holder")
    short = type(locks).__new__(type(locks))
    short.__dict__.update(locks.__dict__, hold_s=0.2)
    assert await short.aacquire_lock("k2", "crashed")
    await asyncio.sleep(0.4)
    assert await short.aacquire_lock("k2", "next", acquire_timeout=2)
    short.release_lock("k2", "next")
