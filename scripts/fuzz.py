"""The long fuzz run: a private Prefect server and `flowmaestro serve` (API and one worker) in a
temporary directory, schemathesis against every route of its OpenAPI schema
(tests/fuzzing.py), then the canvas properties (tests/test_fuzz_canvas.py) with many more
examples. Prints requests and statuses per route and every failure; exits 1 if any.

    .venv/bin/python scripts/fuzz.py                        # 200 requests a route, 5,000 canvases a property
    .venv/bin/python scripts/fuzz.py --examples 1000 --canvas-examples 20000 --seed 7

`make test` runs the same with 10 requests a route and 150 canvases a property.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from flows.local_server import start_server, stop  # noqa: E402  (imports no Prefect)
from tests.fuzzing import build_world, credentials_of, fuzz  # noqa: E402
from tests.processes import free_port, stack_env, start_serve  # noqa: E402


def fuzz_api(home: Path, examples: int, seed: int | None) -> int:
    owner, other = "owner-" + uuid.uuid4().hex, "other-" + uuid.uuid4().hex
    print("starting a Prefect server and flowmaestro serve ...", flush=True)
    prefect = start_server(home / "prefect", free_port(), auth=False)  # its clients carry no auth string
    try:
        env = stack_env(
            home,
            prefect,
            f"sqlite+aiosqlite:///{home / 'fuzz.db'}",
            owner,
            FLOWMAESTRO_API_KEYS=f"owner:{owner},other:{other}",
            FLOWMAESTRO_WORKER_GRACE_S="2",
        )
        serve, base = start_serve(home, env, workers=1)
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {owner}"}, timeout=60) as api:
                ids = build_world(api)
            credentials = credentials_of(owner, other)
            print(f"fuzzing {base} with {examples} requests a route ...", flush=True)
            report = fuzz(base, credentials, ids, examples=examples, seed=seed)
        finally:
            serve.stop()
    finally:
        stop(home / "prefect")
    print(report.table())
    for failure in report.failures:
        print("FAILURE", failure)
    return len(report.failures)


def fuzz_canvases(examples: int) -> int:
    print(f"canvas properties with {examples} examples each ...", flush=True)
    env = dict(os.environ, FLOWMAESTRO_FUZZ_EXAMPLES=str(examples))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            "tests/test_fuzz_canvas.py",
        ],
        cwd=ROOT,
        env=env,
    )
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="requests per route")
    parser.add_argument("--canvas-examples", type=int, default=5000, help="examples per canvas property")
    parser.add_argument("--seed", type=int, default=None, help="reproducible generation")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flowmaestro-fuzz-") as tmp:
        os.environ["FLOWMAESTRO_HOME"] = str(Path(tmp) / "home")
        failures = fuzz_api(Path(tmp), args.examples, args.seed)
    canvas_failed = fuzz_canvases(args.canvas_examples)
    print(
        f"done in {time.monotonic() - started:.0f} s: {failures} API failures, canvas properties "
        f"{'failed' if canvas_failed else 'passed'}"
    )
    return 1 if failures or canvas_failed else 0


if __name__ == "__main__":
    sys.exit(main())
