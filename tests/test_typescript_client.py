"""The OpenAPI schema is complete enough for a typed client: ``openapi-typescript`` (from the
npm registry, versions pinned in clients/typescript/package-lock.json) generates types from
the app's schema, and ``tsc --noEmit`` compiles them with a small client that uses the list,
PATCH, execute and audit routes' parameters and answers (clients/typescript/src/client.ts).

Skipped without npm, except under CI=true (.ci/run), where a skip would pass without the check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from api.app import create_app
from api.settings import ApiSettings

pytestmark = pytest.mark.services  # npm installs from the registry, once per session

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "typescript"
FILES = ("package.json", "package-lock.json", ".npmrc", "tsconfig.json", "src/client.ts")


def run(command: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_typescript_client_generated_from_the_schema_compiles(tmp_path, tmp_path_factory):
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and npm is not installed (.ci/run installs Node.js)", pytrace=False)
        pytest.skip("npm is not installed")
    work = tmp_path / "client"
    for name in FILES:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLIENT / name, work / name)
    schema = create_app(ApiSettings(home=tmp_path)).openapi()
    (work / "openapi.json").write_text(json.dumps(schema))
    cache = tmp_path_factory.getbasetemp() / "npm-cache"  # the session's: a second run downloads nothing
    run([npm, "ci", "--cache", str(cache), "--prefer-offline", "--no-fund", "--no-audit"], work, 300)
    run([npm, "run", "-s", "generate"], work, 120)
    generated = (work / "src" / "schema.d.ts").read_text()
    for path in ("/api/workflows", "/api/executions", "/api/audit", "/api/dead-letters", "/api/credentials"):
        assert f'"{path}": {{' in generated, path
    run([str(work / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", str(work)], work, 300)
