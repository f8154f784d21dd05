"""Run events from the engine to SSE clients: delivery latency and sustained throughput of
``GET /api/executions/{id}/stream`` on real ``flowmaestro serve`` processes, one with the
SQL event log (SQLite) and one with the Redis event log, against a bare Starlette
``StreamingResponse`` fed from an ``asyncio.Queue``.

Usage::

    python -m benchmarks.events [--quick] [--only latency,throughput] [--backends sql,redis]
                                [--subscribers 1,10,100] [--branches 2000] [--branch-concurrency N]
                                [--cap 10] [--bare-in-thread] [--no-bare] [--keep]

The serve processes are started as in ``benchmarks/api.py`` (whose helpers this script
loads): temporary ``FLOWMAESTRO_HOME``, SQLite API database, ``PREFECT_API_URL`` of a healthy
Prefect server; the ``redis`` one with ``FLOWMAESTRO_REDIS_URL`` (its streams are deleted
at the end).

(a) **latency**, node finished -> its event received by an SSE client. Workflows of ``delay``
    nodes (full Prefect task runs): a chain ``start -> d1 .. dK -> end`` (events one at a time;
    K=25, 2 runs) and a ``parallel`` of P branches (completions in bursts; P=50, 1 run). One
    subscriber (httpx-sse) opens the stream right after the 202; for every ``node:completed`` of
    a delay node published after the stream was open, latency = receive time - the event's
    ``timestamp`` (set by the engine when it published the event; same machine, same clock).

(b) **throughput**: one large run, a ``parallel`` of ``--branches`` (2,000; 500 with
    ``--quick``) branches of a ``transform`` (the parallel node without ``max_concurrency``, as
    drawn by default; ``--branch-concurrency`` sets one): 2 x branches + 4 events. For each
    subscriber count (1, 10, 100; a new run each time):
    ``live``    the subscribers connect right after the 202 and follow the run as it goes;
                their rate is bounded by how fast the run produces events ("produced/s");
                "lag" = received - published, sampled every 20th event.
    ``replay``  once the run has ended, the same number of subscribers read the whole stored
                stream again: the capacity of the event log + SSE path alone.
    Each subscriber reads ``--cap`` seconds at most (10; 8 with ``--quick``; live: counted
    from its first event), so that the slow cases stay bounded: the rates are what was
    delivered meanwhile ("cut" in "received/sub").

(c) **bare**: a tiny Starlette app (``StreamingResponse`` over one ``asyncio.Queue`` per
    subscriber, uvicorn with h11 and the asyncio loop like ``flowmaestro serve``), in a
    process of its own started from this script (``--bare-in-thread``: a thread of this
    process, sharing the GIL with the clients). It streams the very SSE frames (bytes) of the
    run of (b) of the first backend, to the same number of subscribers, one ``send`` per frame
    like sse-starlette: ``paced`` releases each frame at its original offset (its publish
    time relative to the run's first event), so the feed rate equals the live run's;
    ``burst`` queues them all at once, like ``replay``.

All the subscribers of (b) and (c) use one cheap SSE reader (frames split on the blank line,
ids checked for gaps and repeats, no per-event JSON parse), so that the client process is
not what is measured. The most robust figure on a busy machine is "srv CPU us/event": the
server's CPU seconds per event delivered, independent of how much CPU the machine gave it.
"loop" times ``GET /docs`` of the serve process every 0.25 s during (b): a static page, so
its answer time is how long the serve event loop was too busy to answer anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from benchmarks import _stack
from benchmarks import api as B

pct, ms, table, CpuMeter, loadavg = B.pct, B.ms, B.table, B.CpuMeter, B.loadavg
SEP = b"\r\n\r\n"  # sse-starlette's frame separator (its default line separator is \r\n)
FINAL = B.FINAL


# ----------------------------------------------------------------------------- canvases


def delay_chain(k: int, seconds: float) -> dict[str, Any]:
    ids = ["start", *(f"d{i}" for i in range(1, k + 1)), "end"]
    nodes = [{"id": "start", "type": "start", "data": {}}]
    nodes += [{"id": f"d{i}", "type": "delay", "data": {"seconds": seconds}} for i in range(1, k + 1)]
    nodes.append({"id": "end", "type": "end", "data": {}})
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(ids, ids[1:]))]
    return {"name": "ev-chain", "nodes": nodes, "edges": edges}


def delay_parallel(branches: int, seconds: float) -> dict[str, Any]:
    return {
        "name": "ev-parallel",
        "settings": {"max_concurrency": branches},
        "nodes": [
            {"id": "fan", "type": "parallel", "data": {"mode": "count", "count": branches}},
            {"id": "d", "type": "delay", "parentId": "fan", "data": {"seconds": seconds}},
        ],
        "edges": [],
    }


def transform_parallel(branches: int, branch_concurrency: int | None = None) -> dict[str, Any]:
    fan = {"mode": "count", "count": branches}
    if branch_concurrency:
        fan["max_concurrency"] = branch_concurrency
    return {
        "name": "ev-big",
        "settings": {"max_concurrency": 64},
        "nodes": [
            {"id": "fan", "type": "parallel", "data": fan},
            {"id": "work", "type": "transform", "parentId": "fan", "data": {"output": "{{ parallel.index }}"}},
        ],
        "edges": [],
    }


RETRIED: Counter = Counter()
SUB_ERRORS: Counter = Counter()


async def execute(client: httpx.AsyncClient, workflow_id: str, attempts: int = 3) -> str:
    """POST execute; an answer other than 202 (the shared Prefect server answering 503, say) is
    retried twice and counted in ``RETRIED``, printed at the end."""
    for attempt in range(attempts):
        try:
            answer = await client.post(
                f"/api/workflows/{workflow_id}/execute", json={"inputs": {}}, timeout=httpx.Timeout(60, connect=30)
            )
        except httpx.HTTPError as exc:
            problem = f"POST {type(exc).__name__}"
        else:
            if answer.status_code == 202:
                return answer.json()["execution_id"]
            problem = f"HTTP {answer.status_code}"
        RETRIED[problem] += 1
        if attempt == attempts - 1:
            raise RuntimeError(f"execute: {problem}")
        await asyncio.sleep(1)
    raise AssertionError


# ----------------------------------------------------------------------------- (a) latency


@dataclass
class LatencyRun:
    samples: list[float] = field(default_factory=list)
    skipped: int = 0  # published before the stream was open (replayed, not live)
    final: str | None = None
    events: int = 0


async def follow_latency(client: httpx.AsyncClient, execution_id: str, node_prefix: str) -> LatencyRun:
    run = LatencyRun()
    async with aconnect_sse(client, "GET", f"/api/executions/{execution_id}/stream") as source:
        opened = time.time()  # the response headers are in: the stream is open
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # httpx-sse reports heartbeat comments as empty events
            now = time.time()
            data = json.loads(sse.data)
            run.events += 1
            if sse.event == "node:completed" and str(data.get("node_id", "")).startswith(node_prefix):
                published = B.event_time(data)
                if published < opened:
                    run.skipped += 1
                else:
                    run.samples.append(now - published)
            if sse.event in FINAL:
                run.final = sse.event
                break
    return run


async def bench_latency(
    served: Any, chain_runs: int, chain_k: int, par_branches: int, par_runs: int, seconds: float
) -> list[list[Any]]:
    rows = []
    async with B.api_client(served.base) as client:
        for label, canvas, runs, prefix in (
            (f"chain of {chain_k} delays", delay_chain(chain_k, seconds), chain_runs, "d"),
            (f"parallel of {par_branches} delays", delay_parallel(par_branches, seconds), par_runs, "d"),
        ):
            workflow_id = await B.save_workflow(client, canvas)
            results: list[LatencyRun] = []
            with CpuMeter(serve=served.pid) as meter:
                for _ in range(runs):
                    execution_id = await execute(client, workflow_id)
                    results.append(await asyncio.wait_for(follow_latency(client, execution_id, prefix), 180))
                    served.run_ids.append(execution_id)
            samples = [s for r in results for s in r.samples]
            bad = Counter(r.final for r in results if r.final != "execution:completed")
            rows.append(
                [
                    served.name,
                    label,
                    runs,
                    len(samples),
                    ms(pct(samples, 50)),
                    ms(pct(samples, 90)),
                    ms(pct(samples, 99)),
                    ms(max(samples) if samples else None),
                    sum(r.skipped for r in results),
                    f"{meter.used['serve'] or 0:.1f}",
                    ",".join(f"{k}:{v}" for k, v in bad.items()) or "-",
                ]
            )
            print(f"  {served.name}: {label} done ({meter.wall:.1f} s)", flush=True)
    return rows


# ----------------------------------------------------------------------------- SSE reader


@dataclass
class Sub:
    status: int | None = None
    opened: float | None = None
    first: float | None = None
    last: float | None = None
    count: int = 0
    gaps: int = 0
    repeats: int = 0
    last_seq: int = 0
    last_frame: bytes = b""
    error: str | None = None
    cut: bool = False  # stopped at the time cap before the stream ended
    frames: list[bytes] | None = None
    samples: list[tuple[int, float, bytes]] = field(default_factory=list)
    """(seq, receive time, frame) of every ``SAMPLE_EVERY``-th event, for lags."""

    def published_lags(self) -> list[float]:
        """Receive - publish time of the sampled events (their data's ``timestamp``)."""
        lags = []
        for _, received, frame in self.samples:
            for line in frame.split(b"\r\n"):
                if line.startswith(b"data: "):
                    lags.append(received - B.event_time(json.loads(line[6:])))
        return lags

    @property
    def rate(self) -> float | None:
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return self.count / (self.last - self.first)

    @property
    def ended(self) -> bool:
        """The stream ended with a final event (not cut, no error)."""
        return not self.cut and self.error is None and any(t in self.last_frame for t in FINAL_BYTES)

    @property
    def reconciled(self) -> bool:
        """The server ended the stream with a made-up final event (``"reconciled": true``)."""
        return b'"reconciled": true' in self.last_frame


FINAL_BYTES = tuple(f"event: {t}".encode() for t in FINAL)
SAMPLE_EVERY = 20


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    keep: bool = False,
    ready: asyncio.Event | None = None,
    deadline: float | None = None,
    cap_after_first: float | None = None,
) -> Sub:
    """Read an SSE stream to its end, or to ``deadline`` (epoch seconds), or ``cap_after_first``
    seconds after its first frame: count frames, check ids (1, 2, 3, ...), time them (each
    frame gets the time its bytes were read)."""
    sub = Sub(frames=[] if keep else None)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(None if deadline is None else loop.time() + deadline - time.time()) as limit:
            await _read_into(sub, client, url, keep, ready, limit, cap_after_first)
    except TimeoutError:
        sub.cut = True
    except (httpx.HTTPError, ValueError) as exc:
        sub.error = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        if ready is not None:
            ready.set()
    return sub


async def _read_into(
    sub: Sub,
    client: httpx.AsyncClient,
    url: str,
    keep: bool,
    ready: asyncio.Event | None,
    limit: Any,
    cap_after_first: float | None,
) -> None:
    async with client.stream("GET", url) as response:
        sub.status, sub.opened = response.status_code, time.time()
        if ready is not None:
            ready.set()
        if response.status_code != 200:
            sub.error = f"HTTP {response.status_code}"
            return
        buffer = b""
        async for chunk in response.aiter_raw():
            now = time.time()
            buffer += chunk
            frames = buffer.split(SEP)
            buffer = frames.pop()
            for frame in frames:
                if not frame or frame[:1] == b":":
                    continue  # a comment: sse-starlette's ping
                if frame[:4] == b"id: ":
                    end = frame.find(b"\r\n")
                    seq = int(frame[4 : end if end > 0 else None])
                    if seq <= sub.last_seq:
                        sub.repeats += 1
                    elif seq != sub.last_seq + 1:
                        sub.gaps += 1
                    sub.last_seq = max(sub.last_seq, seq)
                    if seq % SAMPLE_EVERY == 1:
                        sub.samples.append((seq, now, frame))
                sub.count += 1
                if sub.first is None:
                    sub.first = now
                    if cap_after_first is not None:
                        limit.reschedule(asyncio.get_running_loop().time() + cap_after_first)
                sub.last = now
                sub.last_frame = frame
                if keep:
                    sub.frames.append(frame + SEP)


async def read_many(client: httpx.AsyncClient, url: str, n: int, cap: float, *, live: bool = False) -> list[Sub]:
    """``n`` subscribers at once, each reading ``cap`` seconds at most: from the start (replay),
    or from its first frame (live: the run may take a while to produce its first events; 300 s
    at most)."""
    if live:
        deadline = time.time() + 300
        subs = (read_sse(client, url, deadline=deadline, cap_after_first=cap) for _ in range(n))
    else:
        deadline = time.time() + cap
        subs = (read_sse(client, url, deadline=deadline) for _ in range(n))
    return list(await asyncio.gather(*subs))


def sub_summary(subs: list[Sub], expected: int | None) -> dict[str, Any]:
    rates = [s.rate for s in subs if s.rate]
    firsts = [s.first for s in subs if s.first]
    lasts = [s.last for s in subs if s.last]
    total = sum(s.count for s in subs)
    window = (max(lasts) - min(firsts)) if firsts and lasts else 0
    problems: Counter = Counter()
    for s in subs:
        if s.error:
            problems[s.error.split(":")[0]] += 1
            SUB_ERRORS[s.error] += 1
        if s.gaps:
            problems["gaps"] += 1
        if s.repeats:
            problems["repeats"] += 1
        if s.reconciled:
            problems["reconciled"] += 1
        if s.ended and expected is not None and s.count != expected:
            problems["short"] += 1
    cut = sum(1 for s in subs if s.cut)
    return {
        "rate_p50": pct(rates, 50),
        "rate_min": min(rates) if rates else None,
        "aggregate": total / window if window > 0 else None,
        "total": total,
        "cut": cut,
        "problems": ",".join(f"{k}:{v}" for k, v in problems.items()) or "-",
    }


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def row_cells(
    summary: dict[str, Any], subs: list[Sub], lags: list[float] | None, meter: Any, server: str, probe: Any = None
) -> list[Any]:
    """The columns after "produced/s" (see HEADERS)."""
    used = meter.used.get(server)
    per_event = "-" if used is None or not summary["total"] else f"{used / summary['total'] * 1e6:,.0f}"
    return [
        rate(summary["rate_p50"]),
        rate(summary["rate_min"]),
        rate(summary["aggregate"]),
        f"{summary['total'] / len(subs):,.0f}" + (f" ({summary['cut']} cut)" if summary["cut"] else ""),
        ms(pct(lags, 50)) if lags else "-",
        ms(max(lags)) if lags else "-",
        _cpu(meter, server),
        per_event,
        _cpu(meter, "client"),
        "-" if probe is None or not probe.times else f"{ms(pct(probe.times, 50), 0)}/{ms(max(probe.times), 0)}",
        summary["problems"],
    ]


HEADERS = [
    "path",
    "subs",
    "mode",
    "events",
    "produced/s",
    "per-sub p50/s",
    "per-sub min/s",
    "aggregate/s",
    "received/sub",
    "lag p50 ms",
    "lag max ms",
    "server CPU",
    "srv CPU us/event",
    "client CPU",
    "loop p50/max ms",
    "problems",
]


# ----------------------------------------------------------------------------- (b) throughput


@dataclass
class Capture:
    """A whole stream as one subscriber received it after the run: frames and publish offsets."""

    frames: list[bytes]
    offsets: list[float]
    produced_rate: float


async def wait_run_ended(client: httpx.AsyncClient, execution_id: str, timeout: float = 300.0) -> str:
    return await B.stored_status(client, execution_id, timeout)


async def bench_throughput(
    served: Any, branches: int, counts: list[int], cap: float, branch_concurrency: int | None = None
) -> tuple[list[list[Any]], dict[int, Capture]]:
    rows, captures = [], {}
    expected = 2 * branches + 4  # execution:started, fan started, 2 per branch, fan completed, execution:completed
    async with B.api_client(served.base) as client:
        workflow_id = await B.save_workflow(client, transform_parallel(branches, branch_concurrency))
        for n in counts:
            live_probe = B.Probe("loop", "GET", f"{served.base}/docs")
            with CpuMeter(serve=served.pid) as live_meter:
                async with live_probe:
                    execution_id = await execute(client, workflow_id)
                    served.run_ids.append(execution_id)
                    url = f"/api/executions/{execution_id}/stream"
                    subs = await read_many(client, url, n, cap, live=True)
            status = await wait_run_ended(client, execution_id)
            reference = await read_sse(client, url, keep=True)  # the whole stream, after the run
            capture = _capture(reference) if reference.ended and reference.count == expected else None
            live = sub_summary(subs, expected)
            lags = [lag for s in subs for lag in s.published_lags()]
            rows.append(
                [
                    served.name,
                    n,
                    "live" + ("" if status == "completed" else f" (run {status})"),
                    expected,
                    rate(capture.produced_rate if capture else None),
                    *row_cells(live, subs, lags, live_meter, "serve", live_probe),
                ]
            )
            if capture:
                captures[n] = capture
            replay_probe = B.Probe("loop", "GET", f"{served.base}/docs")
            with CpuMeter(serve=served.pid) as replay_meter:
                async with replay_probe:
                    subs = await read_many(client, url, n, cap)
            replay = sub_summary(subs, expected)
            rows.append(
                [
                    served.name,
                    n,
                    "replay",
                    expected,
                    "-",
                    *row_cells(replay, subs, None, replay_meter, "serve", replay_probe),
                ]
            )
            print(
                f"  {served.name}: {n} subscriber(s) done (live {live_meter.wall:.1f} s, replay "
                f"{replay_meter.wall:.1f} s)",
                flush=True,
            )
    return rows, captures


def _capture(sub: Sub) -> Capture | None:
    published = []
    for frame in sub.frames or []:
        value = None
        for line in frame.split(b"\r\n"):
            if line.startswith(b"data: "):
                value = B.event_time(json.loads(line[6:]))
        published.append(value)
    if not published or all(p is None for p in published):
        return None
    first = min(p for p in published if p is not None)
    offsets, previous = [], 0.0
    for p in published:
        previous = max(previous, (p - first) if p is not None else previous)  # monotonic
        offsets.append(previous)
    window = offsets[-1]
    return Capture(sub.frames, offsets, len(sub.frames) / window if window > 0 else float("inf"))


def _cpu(meter: Any, name: str) -> str:
    used = meter.used.get(name)
    return "-" if used is None or meter.wall <= 0 else f"{used / meter.wall * 100:.0f}%"


# ----------------------------------------------------------------------------- (c) bare server


def bare_app() -> Any:
    """A Starlette app streaming pre-built SSE frames from one asyncio.Queue per subscriber."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    state: dict[str, Any] = {"frames": [], "offsets": [], "queues": []}

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def load(request: Request) -> JSONResponse:
        body = await request.json()
        state["frames"] = [f.encode() for f in body["frames"]]
        state["offsets"] = body["offsets"]
        return JSONResponse({"frames": len(state["frames"])})

    async def stream(request: Request) -> StreamingResponse:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        state["queues"].append(queue)

        async def frames():
            while True:
                frame = await queue.get()
                if frame is None:
                    return
                yield frame

        return StreamingResponse(
            frames(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    async def go(request: Request) -> JSONResponse:
        paced = request.query_params.get("paced") == "1"
        queues, state["queues"] = state["queues"], []
        frames, offsets = state["frames"], state["offsets"]
        loop = asyncio.get_running_loop()
        start_loop, start_wall = loop.time(), time.time()

        async def produce() -> None:
            for frame, offset in zip(frames, offsets):
                if paced:
                    delay = start_loop + offset - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                for queue in queues:
                    queue.put_nowait(frame)
            for queue in queues:
                queue.put_nowait(None)

        state["producer"] = asyncio.create_task(produce())
        return JSONResponse({"subscribers": len(queues), "started": start_wall})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/load", load, methods=["POST"]),
            Route("/stream", stream),
            Route("/go", go, methods=["POST"]),
        ]
    )


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning")


class BareServer:
    def __init__(self, in_thread: bool):
        self.port = _stack.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.in_thread = in_thread
        self.process: subprocess.Popen[bytes] | None = None
        self.server: Any = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        if self.in_thread:
            import uvicorn

            self.server = uvicorn.Server(
                uvicorn.Config(bare_app(), host="127.0.0.1", port=self.port, log_level="warning")
            )
            threading.Thread(target=self.server.run, daemon=True).start()
        else:
            # Its output is dropped: subscribers cut at the time cap make asyncio log
            # "socket.send() raised exception." for every frame still queued for them.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.events", "--bare-server", str(self.port)],
                cwd=B.ROOT,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the bare server did not start")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


async def bench_bare(bare: BareServer, backend: str, captures: dict[int, Capture], cap: float) -> list[list[Any]]:
    """For every subscriber count: the frames of ``backend``'s run paced at its schedule, then
    all at once (burst, like replay)."""
    rows = []
    async with httpx.AsyncClient(
        base_url=bare.base,
        timeout=httpx.Timeout(300, connect=30),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
    ) as client:
        for n, capture in captures.items():
            await client.post(
                "/load", json={"frames": [f.decode() for f in capture.frames], "offsets": capture.offsets}
            )
            for paced in (True, False):
                cells = await _bare_round(client, bare, n, paced, len(capture.frames), capture.offsets, cap)
                label = f"paced as {backend} run" if paced else "burst (cf. replay)"
                rows.append(
                    ["bare", n, label, len(capture.frames), rate(capture.produced_rate) if paced else "-", *cells]
                )
            print(f"  bare: {n} subscriber(s) done", flush=True)
    return rows


async def _bare_round(
    client: httpx.AsyncClient, bare: BareServer, n: int, paced: bool, expected: int, offsets: list[float], cap: float
) -> list[Any]:
    readies = [asyncio.Event() for _ in range(n)]
    with CpuMeter(bare=bare.pid) as meter:
        deadline = time.time() + cap
        tasks = [
            asyncio.create_task(read_sse(client, "/stream", ready=readies[i], deadline=deadline)) for i in range(n)
        ]
        await asyncio.gather(*(r.wait() for r in readies))  # every subscriber's queue exists
        started = (await client.post("/go", params={"paced": "1" if paced else "0"})).json()
        subs = await asyncio.gather(*tasks)
    summary = sub_summary(subs, expected)
    # Paced: frame i was due at (start + its offset): how late did the subscribers get it?
    lags = (
        [
            received - (started["started"] + offsets[seq - 1])
            for s in subs
            for seq, received, _ in s.samples
            if seq <= len(offsets)
        ]
        if paced
        else None
    )
    if bare.pid is None:
        meter.used["bare"] = None  # a thread of this process: its CPU is in "client"
    return row_cells(summary, subs, lags, meter, "bare")


# ----------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    only = set(args.only.split(",")) if args.only else {"latency", "throughput"}
    backends = [b for b in args.backends.split(",") if b]
    counts = [int(c) for c in (args.subscribers or ("1,10" if args.quick else "1,10,100")).split(",")]
    branches = args.branches or (500 if args.quick else 2000)
    chain_k, chain_runs = (10, 1) if args.quick else (25, 2)
    par_branches, par_runs = (20, 1) if args.quick else (50, 1)
    cap = args.cap or (8 if args.quick else 10)
    prefect_url = B.prefect_api_url()
    print(
        f"FlowMaestro events benchmark: Prefect {prefect_url}, backends {', '.join(backends)}, code "
        f"{B.code_fingerprint()}, {os.cpu_count()} CPUs, load average {loadavg()}",
        flush=True,
    )

    def start(name: str) -> Any:
        redis_url = (args.redis_url or B.DEFAULT_REDIS) if name == "redis" else None
        return B.start_serve(name, prefect_url, redis_url=redis_url, wait=False)

    servers = [start(name) for name in backends]
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(asyncio.to_thread(_stack.wait_healthy, s, t0) for s in servers))
        print(
            "serve processes: "
            + ", ".join(f"{s.name} pid {s.pid} ({s.startup_s:.1f} s to healthy)" for s in servers)
            + "\n",
            flush=True,
        )
        if "latency" in only:
            rows = []
            for served in servers:
                rows += await bench_latency(served, chain_runs, chain_k, par_branches, par_runs, args.delay)
            print(
                table(
                    [
                        "backend",
                        "workflow",
                        "runs",
                        "n",
                        "p50 ms",
                        "p90 ms",
                        "p99 ms",
                        "max ms",
                        "replayed",
                        "serve CPU s",
                        "not completed",
                    ],
                    rows,
                    title=f"\n(a) node finished (node:completed published) -> event received by an SSE client, "
                    f"delay nodes of {args.delay} s",
                )
                + "\n",
                flush=True,
            )
        if "throughput" in only:
            rows: list[list[Any]] = []
            captures: dict[str, dict[int, Capture]] = {}
            for served in servers:
                backend_rows, captures[served.name] = await bench_throughput(
                    served, branches, counts, cap, args.branch_concurrency or None
                )
                rows += backend_rows
            bare_rows: list[list[Any]] = []
            schedule = next((name for name in backends if captures.get(name)), None)
            if not args.no_bare and schedule:
                bare = BareServer(args.bare_in_thread)
                await asyncio.to_thread(bare.start)
                try:
                    bare_rows = await bench_bare(bare, schedule, captures[schedule], cap)
                finally:
                    bare.stop()
            print(
                table(
                    HEADERS,
                    rows + bare_rows,
                    title=f"\n(b) one run, parallel of {branches} transform branches"
                    f"{f' ({args.branch_concurrency} at a time)' if args.branch_concurrency else ''}, "
                    f"followed by N SSE subscribers (each reads {cap:.0f} s at most); (c) bare Starlette "
                    f"StreamingResponse, same frames, same subscribers",
                ),
                flush=True,
            )
            print(LEGEND, flush=True)
    finally:
        for served in servers:
            await asyncio.to_thread(served.stop)
        await _cleanup(servers, args.keep)
    if RETRIED:
        print(f"\nPOST execute answers other than 202 (retried): {dict(RETRIED)}", flush=True)
    for error, count in SUB_ERRORS.most_common(3):
        print(f"subscriber error x{count}: {error}", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)
    return 0


LEGEND = """\
produced/s: events / (final - first event timestamp) of the run, from a full read after it ended.
per-sub: events a subscriber received / (its last - its first receive); aggregate: all received /
(last receive by anyone - first receive by anyone). received/sub: events per subscriber ("cut":
stopped at the time cap). lag: received - published, every 20th event (paced bare: - due).
server CPU: % of a core used by the serve process (live: the run's engine included) or the bare
server; srv CPU us/event: its CPU seconds / events delivered. loop: answer time of GET /docs of
the serve process, every 0.25 s (how long its event loop was busy). problems: gaps or repeats in ids,
short streams, "reconciled": the server ended the stream with a made-up final event."""


async def _cleanup(servers: list[Any], keep: bool) -> None:
    for served in servers:
        await B.delete_streams(served)
        if not keep:
            shutil.rmtree(served.home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, 1 and 10 subscribers")
    parser.add_argument("--only", default="", help="latency,throughput (default both)")
    parser.add_argument("--backends", default="sql,redis", help="serve processes to start: sql,redis")
    parser.add_argument("--subscribers", default="", help="subscriber counts (default 1,10,100)")
    parser.add_argument("--branches", type=int, default=0, help="branches of the large run (default 2000)")
    parser.add_argument(
        "--branch-concurrency",
        type=int,
        default=0,
        help="max_concurrency of the large run's parallel node (default: none, i.e. all branches at once)",
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=0,
        help="seconds each subscriber reads at most (live: from its first event; default 10, quick 8)",
    )
    parser.add_argument("--delay", type=float, default=0.1, help="seconds of each delay node in (a)")
    parser.add_argument("--redis-url", default=None, help=f"default {B.DEFAULT_REDIS}")
    parser.add_argument(
        "--bare-in-thread",
        action="store_true",
        help="run the bare server in a thread of this process instead of a process of its own",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip (c)")
    parser.add_argument("--keep", action="store_true", help="keep the serve processes' temporary homes")
    parser.add_argument("--bare-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        serve_bare(args.bare_server)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
