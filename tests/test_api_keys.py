"""Owners' API keys managed through the API with the admin key, and the key ``serve``
keeps across restarts (issue 31, major 8; ``serve --port <taken>``: minor 14)."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from api.settings import ApiSettings
from cli.local_key import local_api_key
from tests.processes import Proc, cli, free_port, stack_env, start_serve
from tests.support import api_without_prefect

ADMIN = "admin-" + uuid.uuid4().hex
ENV_KEY = "env-" + uuid.uuid4().hex


def settings(tmp_path, **more) -> ApiSettings:
    return ApiSettings(
        home=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        api_keys=f"ops:{ENV_KEY}",
        **more,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_made_by_the_admin_works_at_once_is_stored_hashed_and_stops_when_revoked(tmp_path):
    async with api_without_prefect(settings(tmp_path, admin_key=ADMIN), ADMIN) as admin:
        made = await admin.post("/api/admin/keys", json={"owner": "acme", "name": "ci"})
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        assert made.json()["owner"] == "acme" and made.json()["last_used_at"] is None
        assert key.startswith("fm_") and made.json()["prefix"] == key[:10]
        # Used at once, by a new owner: no restart, no configuration.
        assert (await admin.get("/api/workflows", headers=bearer(key))).status_code == 200
        (listed,) = (await admin.get("/api/admin/keys", params={"owner": "acme"})).json()
        assert listed["id"] == made.json()["id"] and listed["last_used_at"] is not None
        assert "key" not in listed
        # The environment's keys keep working beside it.
        assert (await admin.get("/api/workflows", headers=bearer(ENV_KEY))).status_code == 200
        # An owner's key does not manage keys, nor does a wrong one.
        for other in (key, ENV_KEY, "nope"):
            refused = await admin.get("/api/admin/keys", headers=bearer(other))
            assert refused.status_code == 401 and refused.json()["detail"] == "invalid admin key"
        # Revoked: 401 at the next request; listed only when asked for.
        assert (await admin.delete(f"/api/admin/keys/{listed['id']}")).status_code == 204
        gone = await admin.get("/api/workflows", headers=bearer(key))
        assert gone.status_code == 401 and gone.json()["detail"] == "invalid API key"
        assert (await admin.get("/api/admin/keys", params={"owner": "acme"})).json() == []
        revoked = (await admin.get("/api/admin/keys", params={"include_revoked": True})).json()
        assert [k["revoked_at"] is not None for k in revoked] == [True]
        assert (await admin.delete(f"/api/admin/keys/{uuid.uuid4()}")).status_code == 404
        bad = await admin.post("/api/admin/keys", json={"owner": "", "name": "x"})
        assert bad.status_code == 422 and bad.json()["issues"][0]["field"] == "body.owner"
    # Only the hash is stored.
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM api_keys")).mappings().all()
    engine.dispose()
    assert [r["key_hash"] for r in rows] == [hashlib.sha256(key.encode()).hexdigest()]
    assert not any(key in str(value) for r in rows for value in r.values())


async def test_without_an_admin_key_the_routes_are_closed(tmp_path):
    async with api_without_prefect(settings(tmp_path), ENV_KEY) as client:
        answer = await client.post("/api/admin/keys", json={"owner": "acme", "name": "ci"})
    assert answer.status_code == 403 and "FLOWMAESTRO_ADMIN_KEY" in answer.json()["detail"]


def test_the_local_key_is_generated_once_private_and_read_back(tmp_path):
    key, path, generated = local_api_key(tmp_path / "home")
    assert generated and len(key) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local_api_key(tmp_path / "home") == (key, path, False)


# --------------------------------------------------------------------------- real processes


@pytest.mark.services
def test_serve_keeps_its_generated_key_and_an_admin_key_works_against_it(tmp_path, prefect_server):
    env = stack_env(tmp_path, prefect_server, f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", "unused")
    del env["FLOWMAESTRO_API_KEYS"]
    env["FLOWMAESTRO_ADMIN_KEY"] = ADMIN
    keys = []
    for start in range(2):
        serve, base = start_serve(tmp_path, env, workers=0)
        try:
            key = (tmp_path / "api-key").read_text().strip()
            keys.append(key)
            assert key not in serve.output(), "the key is printed"
            assert str(tmp_path / "api-key") in serve.output()
            assert httpx.get(f"{base}/api/workflows", headers=bearer(key), timeout=10).status_code == 200
            if start == 0:
                made = httpx.post(
                    f"{base}/api/admin/keys", json={"owner": "tenant", "name": "t"}, headers=bearer(ADMIN), timeout=10
                )
                assert made.status_code == 201, made.text
                tenant = made.json()["key"]
                saved = httpx.post(
                    f"{base}/api/workflows/validate",
                    json={"canvas": {"name": "x", "nodes": [{"id": "start", "type": "start"}]}},
                    headers=bearer(tenant),
                    timeout=30,
                )
                assert saved.status_code == 200, saved.text
            else:  # and across the restart
                assert httpx.get(f"{base}/api/workflows", headers=bearer(tenant), timeout=10).status_code == 200
        finally:
            serve.stop()
    assert keys[0] == keys[1]


@pytest.mark.services
def test_serve_on_a_taken_port_fails_before_printing_an_address(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        env = {**os.environ, "FLOWMAESTRO_HOME": str(tmp_path), "FLOWMAESTRO_API_KEYS": f"ops:{ENV_KEY}"}
        proc = Proc(cli("serve", "--port", str(port), "--workers", "0"), env, tmp_path / "serve.log")
        code = proc.process.wait(120)
        output = proc.output()
        proc.stop()
    finally:
        taken.close()
    assert code == 1, output
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "http://" not in output and "Workers" not in output, output
