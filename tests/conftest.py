"""Test session setup.

Prefect reads its settings when it is first imported, so the environment is set here,
before any test module imports it: a private PREFECT_HOME and FLOWMAESTRO_HOME, and the
API URL of the one real Prefect server the session starts (lazily, the first time a test
needs it).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="flowmaestro-tests-"))


_PORT = free_port()
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "client-prefect-home")
os.environ["FLOWMAESTRO_HOME"] = str(_SESSION_DIR / "flowmaestro-home")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # the server stops before the log shipper
os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(_SESSION_DIR / "results"))


SERVER_FIXTURES = {"prefect_server", "pg_prefect", "served"}
"""Fixtures that start a Prefect server (and what runs on it): their tests are ``prefect``."""


LONGEST_FILES_FIRST = (
    "test_durability.py",
    "test_benchmarks_smoke.py",
    "test_fuzz_api.py",
    "test_accept.py",
    "security/test_worker_dos.py",
    "test_failing_services.py",
    "test_schedules.py",
    "test_accept_embedded.py",
    "test_timed_waits.py",
    "test_node_limits.py",
    "security/test_delay_release.py",
    "test_worker_wakeups.py",
    "test_schedule_overlap.py",
    "test_demo_worker.py",
    "test_drain.py",
    "test_workers.py",
    "test_agent_durability.py",
    "test_ui_browser.py",
)
"""The service tests' longest files, longest first: 80 to 280 s each on three processes,
against 75 s or less for every other file. ``make test`` hands the service tests out a file at
a time in collection order (``--dist loadfile --no-loadscope-reorder``), and a long file handed
out last runs alone while the other processes have nothing left: these go first (longest
processing time first). A file missing here costs time, never a result."""

_TESTS = Path(__file__).parent


def _file_rank(item: pytest.Item) -> int:
    name = item.path.relative_to(_TESTS).as_posix() if item.path.is_relative_to(_TESTS) else ""
    return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks what the fixtures say: a test that uses a Prefect server is ``prefect``; one
    that is ``prefect`` or ``workers`` needs services (``services``: PostgreSQL, Redis,
    processes), like the tests marked so by hand. ``make test-fast`` runs ``not services``.
    Then the longest files first (``LONGEST_FILES_FIRST``; a stable sort keeps each file's
    tests together and in their order)."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.prefect)
        if item.get_closest_marker("prefect") or item.get_closest_marker("workers"):
            item.add_marker(pytest.mark.services)
    missing = [name for name in LONGEST_FILES_FIRST if not (_TESTS / name).is_file()]
    if missing:
        raise pytest.UsageError(f"LONGEST_FILES_FIRST (tests/conftest.py) names no such file: {missing}")
    items.sort(key=_file_rank)


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server (SQLite) for the whole session."""
    from flows.local_server import ServerInfo, start_server, stop

    home = _SESSION_DIR / "server"
    home.mkdir(parents=True, exist_ok=True)
    # The scheduler service makes the runs of deployment schedules every 60 s by default;
    # schedule tests would wait on it for minutes.
    # Without auth: the test process and the servers it starts are its clients, set up before
    # Prefect is imported (the embedded default's auth: tests/security/test_prefect_results.py).
    info: ServerInfo = start_server(
        home, _PORT, env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}, auth=False
    )
    assert info.api_url == os.environ["PREFECT_API_URL"], "the chosen port was taken; rerun the tests"
    yield info
    stop(home)


@pytest.fixture(scope="session")
def test_handler_plugin(tmp_path_factory):
    """The test handlers (tests/support.py) installed as a plugin, as an installation adds
    node types: a distribution on ``sys.path`` whose ``flowmaestro.node_handlers`` entry
    point names them. Every registry built afterwards in this process (a run context's, the
    API's, an in-process worker's, ``run_workflow``'s) has them; there is no process
    registry to register them into."""
    from node_handlers.registry import ENTRY_POINT_GROUP

    site = tmp_path_factory.mktemp("plugin-site")
    info = site / "flowmaestro_test_handlers-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flowmaestro-test-handlers\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntest_handlers = tests.support:plugin_handlers\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        yield


@pytest.fixture
def test_handlers(test_handler_plugin):
    """The test handlers in every registry built from now on (``test_handler_plugin``), and
    their journal cleared."""
    from tests.support import JOURNAL

    JOURNAL.clear()
    return JOURNAL


@pytest.fixture
async def run_context(test_handler_plugin):
    """A run context built from the test environment, as an in-process caller builds one
    (its registry has the test handlers); bind the generic flow to it with
    ``flows.flow.workflow_flow`` (with listeners: ``dataclasses.replace(run_context,
    listeners=(...,))``)."""
    from flows.run_context import RunContext

    context = RunContext.from_environment()
    yield context
    await context.close()


class InProcessWorkers:
    """FlowMaestro workers running in the test process (their registries have the test
    handlers: ``test_handler_plugin``), each on its own work pool and database."""

    def __init__(self) -> None:
        self.running: list[tuple[asyncio.Event, asyncio.Task, object]] = []

    async def start(self, database_url: str, pool: str) -> None:
        from deployments.worker import run_worker, worker_context
        from flows.flow import workflow_flow

        manager = worker_context(database_url)
        context = await manager.__aenter__()
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_worker(
                workflow_flow(context),
                pool=pool,
                limit=50,
                poll_s=0.5,
                cancel_poll_s=0.5,
                grace_s=5,
                on_cancel=context.cancellations.cancel,
                started=lambda _line: ready.set(),
                stop=stop,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=60)
        self.running.append((stop, task, manager))

    async def stop_all(self) -> None:
        for stop, task, manager in self.running:
            stop.set()
            await asyncio.wait_for(task, timeout=60)
            await manager.__aexit__(None, None, None)
        self.running.clear()


@pytest.fixture(scope="session")
def pg_prefect(tmp_path_factory):
    """A Prefect server on PostgreSQL (several worker processes write to it at once), started
    once for the session. Each module's installation has a work pool of its own
    (``tests.processes.stack_env``)."""
    from tests.processes import prefect_on_postgres

    with prefect_on_postgres(tmp_path_factory.mktemp("prefect-pg")) as info:
        yield info


@pytest.fixture(scope="module")
def counting():
    """A local HTTP server counting requests (``tests.processes.CountingServer``)."""
    from tests.processes import CountingServer

    with CountingServer() as server:
        yield server


@pytest.fixture(scope="module")
async def in_process_workers(test_handler_plugin):
    workers = InProcessWorkers()
    yield workers
    await workers.stop_all()


STREAMS_PER_RUN = 3
"""The cap on live streams of one run of ``served`` (tests/test_limits.py reaches it)."""


@dataclass(frozen=True)
class Served:
    """A running ``flowmaestro serve``: its URL, home (logs, SQLite store), keys and secret."""

    base: str
    home: Path
    owner_key: str
    other_key: str
    secret: str
    """``FLOWMAESTRO_SECRET_TOKEN`` of its workers: http nodes send it as ``token_secret: TOKEN``."""
    prefect_log: Path
    """The log of the session's Prefect server, which it uses."""
    metrics_key: str = ""
    """The operator's key for GET /metrics (closed without it)."""


@pytest.fixture(scope="session")
def served(tmp_path_factory, prefect_server):
    """One ``flowmaestro serve`` (the API and a worker, a SQLite store, Redis events) for the
    tests that need a real server process: the API fuzz, the secrets sweep."""
    import uuid

    from tests.processes import stack_env, start_serve

    home = tmp_path_factory.mktemp("served")
    owner, other, secret, metrics = (f"{what}-{uuid.uuid4().hex}" for what in ("owner", "other", "secret", "metrics"))
    env = stack_env(
        home,
        prefect_server,
        f"sqlite+aiosqlite:///{home / 'store.db'}",
        owner,
        FLOWMAESTRO_API_KEYS=f"owner:{owner},other:{other}",
        FLOWMAESTRO_SECRET_TOKEN=secret,
        FLOWMAESTRO_SECRET_TOKEN_OWNERS="owner",
        FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1",
        FLOWMAESTRO_WORK_POOL=f"served-{uuid.uuid4().hex[:6]}",
        FLOWMAESTRO_WORKER_GRACE_S="2",
        FLOWMAESTRO_MAX_STREAMS_PER_RUN=str(STREAMS_PER_RUN),
        FLOWMAESTRO_METRICS_KEY=metrics,
        # A node test answers 202 after this wait: the fuzz's requests time out at 30 s.
        FLOWMAESTRO_NODE_TEST_WAIT_S="5",
    )
    serve, base = start_serve(home, env, workers=1)
    try:
        yield Served(base, home, owner, other, secret, _SESSION_DIR / "server" / "prefect-server.log", metrics)
    finally:
        serve.stop()
