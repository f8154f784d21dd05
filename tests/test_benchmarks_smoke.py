"""Every benchmark runs to its end at tiny sizes, as ``python -m benchmarks.<name>`` from the
repository root, so that none of them rots between the times someone measures with it.
The numbers are not checked: on a loaded test machine they mean nothing. Each benchmark is a
process of its own (some start more): all are ``services``, none runs in ``make test-fast``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.services

BENCH_TIMEOUT_S = 900
"""Generous: the larger ones start a Prefect server, API and worker processes of their own."""


def run_benchmark(name: str, *args: str, home: Path, prefect_url: str | None = None) -> str:
    """Runs ``python -m benchmarks.<name> ARGS``; its output, once it exited 0."""
    env = dict(
        os.environ,
        FLOWMAESTRO_HOME=str(home / "flowmaestro"),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "results"),
    )
    if prefect_url:  # the session's server: the benchmark starts none of its own that outlives it
        env["PREFECT_API_URL"] = prefect_url
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"benchmarks.{name} exited {done.returncode}:\n{output[-6000:]}"
    return output


def test_compile(tmp_path):
    output = run_benchmark("compile", "--sizes", "60", "--shapes", "layered,chain,nested", home=tmp_path)
    assert "layered" in output and "nested" in output


def test_tracing(tmp_path):
    """In-process (a thread for the OTLP receiver): every span of every traced run arrives."""
    output = run_benchmark("tracing", "--quick", home=tmp_path)
    assert "spans received by the OTLP receiver: 1224 (expected 1224)" in output


def test_code_node(tmp_path):
    output = run_benchmark("code_node", "--quick", home=tmp_path)
    assert "code javascript" in output and "target: Python code node p50" in output


def test_engine(tmp_path, prefect_server):
    run_benchmark(
        "engine",
        "--quick",
        "--reps",
        "1",
        "--only",
        "chain",
        "--no-check",
        home=tmp_path,
        prefect_url=prefect_server.api_url,
    )


def test_containers(tmp_path, prefect_server):
    run_benchmark(
        "containers",
        "--quick",
        "--reps",
        "1",
        "--only",
        "parallel",
        "--no-check",
        home=tmp_path,
        prefect_url=prefect_server.api_url,
    )


def test_durability(tmp_path, prefect_server):
    """The journal's cost; its crash trials are tests/test_durability.py's harness, run there
    (one trial here took 4 minutes on a loaded machine)."""
    run_benchmark(
        "durability",
        "--quick",
        "--reps",
        "1",
        "--database",
        "sqlite",
        "--crash-trials",
        "0",
        home=tmp_path,
        prefect_url=prefect_server.api_url,
    )


@pytest.mark.workers
def test_api(tmp_path, pg_prefect):
    """The API benchmark, its raw-Prefect baseline (benchmarks/raw_prefect_worker.py) and its
    in-process one."""
    run_benchmark(
        "api",
        "--quick",
        "--only",
        "latency,concurrent,raw,inprocess",
        "--runs",
        "2",
        "--budget-a",
        "10",
        "--concurrent",
        "3",
        "--workers",
        "1",
        "--prefect-url",
        pg_prefect.api_url,
        home=tmp_path,
    )


def test_events(tmp_path, prefect_server):
    run_benchmark(
        "events",
        "--quick",
        "--only",
        "latency",
        "--backends",
        "sql",
        "--no-bare",
        home=tmp_path,
        prefect_url=prefect_server.api_url,
    )


def test_prefect_observer(tmp_path):
    """It starts a Prefect server of its own on PostgreSQL, and stops it."""
    run_benchmark("prefect_observer", "--runs", "2", "--rounds", "1", home=tmp_path)


def test_ui_page(tmp_path):
    """Headless Chromium on the run page of a run written straight to the store (no Prefect)."""
    from tests.test_prefect_ui import require_chromium

    require_chromium()
    run_benchmark("ui_page", "--nodes", "20", "--chunks", "2", "--trials", "1", home=tmp_path)


def test_agent_crash(tmp_path, prefect_server):
    """The agent journal's overhead; its crash trials are tests/test_agent_durability.py's
    harness, run there."""
    output = run_benchmark(
        "agent_crash",
        "--turns",
        "3",
        "--reps",
        "1",
        "--database",
        "sqlite",
        "--crash-trials",
        "0",
        home=tmp_path,
        prefect_url=prefect_server.api_url,
    )
    assert "overhead ms/turn" in output


def test_store(tmp_path):
    """A scratch PostgreSQL database (created and dropped by the benchmark) with a few hundred rows."""
    output = run_benchmark("store", "--executions", "500", "--workflows", "100", "--repeat", "3", home=tmp_path)
    assert "executions: a page in the middle (cursor)" in output and "p95 ms" in output


def test_limits(tmp_path, prefect_server):
    output = run_benchmark("limits", "--quick", home=tmp_path, prefect_url=prefect_server.api_url)
    assert "one concurrency slot costs" in output
