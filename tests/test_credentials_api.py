"""Stored credentials through the API on a real PostgreSQL store (and the session's Prefect
server, which the API's startup connects to): values go in and never come out, names are
unique per owner, each owner sees only their own, and the database holds no value."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings

pytestmark = pytest.mark.prefect

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "tok-" + uuid.uuid4().hex
PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def database(prefect_server):
    name = f"fm_cred_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield name
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def make_api(database, tmp_path):
    @asynccontextmanager
    async def make(secret_key: str = "old-key"):  # the key ring test re-seals every row
        alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
        settings = ApiSettings(
            database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
            api_keys=f"{alice}:key-{alice},{bob}:key-{bob}",
            home=tmp_path,
            secret_key=secret_key,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer key-{alice}"},
            ) as client:
                client.bob = {"Authorization": f"Bearer key-{bob}"}  # type: ignore[attr-defined]
                yield client

    return make


def assert_no_value(answer: Any) -> None:
    text = answer if isinstance(answer, str) else str(answer)
    assert TOKEN not in text and PASSWORD not in text


async def test_create_list_get_rotate_delete_never_show_a_value(make_api, database):
    async with make_api() as api:
        created = await api.post(
            "/api/credentials",
            json={"name": "github", "type": "bearer", "data": {"token": TOKEN}, "description": "CI"},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert_no_value(created.text)
        assert body["name"] == "github" and body["type"] == "bearer" and body["fields"] == ["token"]
        assert body["description"] == "CI" and body["last_used_at"] is None
        assert set(body) == {"id", "name", "type", "description", "fields", "created_at", "updated_at", "last_used_at"}

        listed = await api.get("/api/credentials")
        assert listed.status_code == 200 and [c["id"] for c in listed.json()] == [body["id"]]
        assert_no_value(listed.text)
        one = await api.get(f"/api/credentials/{body['id']}")
        assert one.status_code == 200 and one.json() == body

        rotated = await api.put(f"/api/credentials/{body['id']}", json={"data": {"token": TOKEN + "-new"}})
        assert rotated.status_code == 200, rotated.text
        assert_no_value(rotated.text)
        assert rotated.json()["description"] == "CI" and rotated.json()["updated_at"] >= body["updated_at"]

        # The database holds the name and the field names, no value in any form.
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
        try:
            rows = await conn.fetch("SELECT * FROM credentials WHERE id = $1", body["id"])
        finally:
            await conn.close()
        assert len(rows) == 1
        assert TOKEN not in str(dict(rows[0])) and "tok-" not in str(dict(rows[0]))

        assert (await api.delete(f"/api/credentials/{body['id']}")).status_code == 204
        assert (await api.get(f"/api/credentials/{body['id']}")).status_code == 404
        assert (await api.delete(f"/api/credentials/{body['id']}")).status_code == 404
        assert (await api.get("/api/credentials")).json() == []


async def test_names_are_unique_per_owner_and_owners_are_isolated(make_api):
    async with make_api() as api:
        data = {"name": "shared-name", "type": "api_key", "data": {"api_key": TOKEN}}
        mine = await api.post("/api/credentials", json=data)
        assert mine.status_code == 201
        again = await api.post("/api/credentials", json={**data, "type": "bearer", "data": {"token": "x"}})
        assert again.status_code == 409 and "shared-name" in again.json()["detail"]
        theirs = await api.post("/api/credentials", json=data, headers=api.bob)
        assert theirs.status_code == 201  # another owner's namespace
        cid = mine.json()["id"]
        assert [c["id"] for c in (await api.get("/api/credentials", headers=api.bob)).json()] == [theirs.json()["id"]]
        for method in ("GET", "DELETE"):
            refused = await api.request(method, f"/api/credentials/{cid}", headers=api.bob)
            assert refused.status_code == 404, (method, refused.text)
        refused = await api.put(f"/api/credentials/{cid}", json={"data": {"api_key": "stolen"}}, headers=api.bob)
        assert refused.status_code == 404
        assert (await api.get(f"/api/credentials/{cid}")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name", "type": "bearer", "data": {"token": "t"}}, "body.bearer.name"),
        ({"name": "-x", "type": "bearer", "data": {"token": "t"}}, "body.bearer.name"),
        ({"name": "x" * 65, "type": "bearer", "data": {"token": "t"}}, "body.bearer.name"),
        ({"name": "ok", "type": "oauth", "data": {"token": "t"}}, "body"),
        ({"name": "ok", "type": "bearer", "data": {}}, "body.bearer.data.token"),
        ({"name": "ok", "type": "basic", "data": {"username": "u"}}, "body.basic.data.password"),
        ({"name": "ok", "type": "header", "data": {"name": "X-Key"}}, "body.header.data.value"),
        ({"name": "ok", "type": "header", "data": {"name": "X Key", "value": "v"}}, "body.header.data.name"),
        ({"name": "ok", "type": "api_key", "data": {"api_key": "k", "extra": "v"}}, "body.api_key.data.extra"),
        ({"name": "ok", "type": "bearer", "data": {"token": ""}}, "body.bearer.data.token"),
        ({"name": "ok", "type": "bearer", "data": {"token": "a\nb"}}, "body.bearer.data.token"),
        ({"name": "ok", "type": "bearer", "data": {"token": 5}}, "body.bearer.data.token"),
        ({"name": "ok", "type": "custom", "data": {}}, "body.custom.data"),
        ({"name": "ok", "type": "custom", "data": {"bad name": "v"}}, "body.custom.data.bad name.[key]"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(make_api, body, field):
    async with make_api() as api:
        answer = await api.post("/api/credentials", json=body)
        assert answer.status_code == 422, answer.text
        assert field in [issue["field"] for issue in answer.json()["issues"]], answer.json()
        assert "a\nb" not in answer.text
        assert (await api.get("/api/credentials")).json() == []


async def test_rotation_checks_the_fields_of_the_type(make_api):
    async with make_api() as api:
        cid = (
            await api.post(
                "/api/credentials",
                json={"name": "db", "type": "basic", "data": {"username": "u", "password": PASSWORD}},
            )
        ).json()["id"]
        wrong = await api.put(f"/api/credentials/{cid}", json={"data": {"password": "p2"}})
        assert wrong.status_code == 422 and wrong.json()["issues"][0]["field"] == "data.username"
        wrong = await api.put(f"/api/credentials/{cid}", json={"data": {"username": "u", "password": "p", "x": "y"}})
        assert wrong.status_code == 422 and wrong.json()["issues"][0]["field"] == "data.x"
        custom = await api.post(
            "/api/credentials", json={"name": "misc", "type": "custom", "data": {"a": "1", "b": "2"}}
        )
        assert custom.status_code == 201 and custom.json()["fields"] == ["a", "b"]
        renamed = await api.put(
            f"/api/credentials/{custom.json()['id']}", json={"data": {"c": "3"}, "description": "now c"}
        )
        assert renamed.status_code == 200 and renamed.json()["fields"] == ["c"]
        assert renamed.json()["description"] == "now c"


async def test_key_ring_rotation_keeps_old_secrets_readable_and_reseal_retires_the_old_key(database):
    """Secrets sealed under the old key (a credential, a webhook secret) open with the ring
    "new,old"; ``reseal_all`` seals each again under the new key, after which the new key
    alone opens them and the old one alone opens none."""
    from store.credentials import Credentials, reseal_all
    from store.db import make_engine, sessions
    from store.secrets import SecretBox
    from store.triggers import Webhooks

    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}")
    database_sessions = sessions(engine)
    owner = f"ring-{uuid.uuid4().hex}"
    old, ring, new = (SecretBox.for_credentials(k, None) for k in ("old-key", "new-key, old-key", "new-key"))  # type: ignore[arg-type]
    try:
        hooks_old, hooks_ring, hooks_new = (
            SecretBox.from_settings(k, None) for k in ("old-key", "new-key, old-key", "new-key")
        )
        await Credentials(database_sessions, old).create(owner, "svc", "bearer", {"token": TOKEN})
        hook = await Webhooks(database_sessions, hooks_old).create(owner, "wf-1", "hook", "whsec_" + PASSWORD)

        assert (await Credentials(database_sessions, ring).read(owner, "svc")).data == {"token": TOKEN}
        assert (await Webhooks(database_sessions, hooks_ring).for_delivery(hook.id)).secret == "whsec_" + PASSWORD
        with pytest.raises(ValueError, match="any key of FLOWMAESTRO_SECRET_KEY"):
            await Credentials(database_sessions, new).read(owner, "svc")

        counts = await reseal_all(database_sessions, hooks_ring, ring)
        assert counts.credentials >= 1 and counts.webhooks >= 1

        assert (await Credentials(database_sessions, new).read(owner, "svc")).data == {"token": TOKEN}
        assert (await Webhooks(database_sessions, hooks_new).for_delivery(hook.id)).secret == "whsec_" + PASSWORD
        with pytest.raises(ValueError):
            await Credentials(database_sessions, old).read(owner, "svc")
        with pytest.raises(ValueError):
            await Webhooks(database_sessions, hooks_old).for_delivery(hook.id)
        # The ring of credentials is derived: the webhook ring itself opens no credential.
        with pytest.raises(ValueError):
            await Credentials(database_sessions, hooks_new).read(owner, "svc")
    finally:
        await engine.dispose()


async def test_last_used_at_is_written_once_per_period_not_per_read(database):
    from datetime import timedelta

    from store.credentials import Credentials
    from store.db import make_engine, sessions
    from store.secrets import SecretBox

    engine = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}")
    owner = f"usage-{uuid.uuid4().hex}"
    credentials = Credentials(sessions(engine), SecretBox.from_settings("usage-key", None), timedelta(hours=1))  # type: ignore[arg-type]
    try:
        created = await credentials.create(owner, "svc", "api_key", {"api_key": TOKEN})
        assert created.last_used_at is None
        await credentials.read(owner, "svc")
        first = (await credentials.get(owner, created.id)).last_used_at
        assert first is not None
        for _ in range(5):
            await credentials.read(owner, "svc")
        assert (await credentials.get(owner, created.id)).last_used_at == first  # no write within the period
        with pytest.raises(Exception, match="not found"):
            await credentials.read(f"other-{owner}", "svc")
    finally:
        await engine.dispose()
