"""The API's gateway to Prefect (api/prefect_gateway.py): every call bounded in time, every
failure of Prefect mapped to the domain error the API answers with. No Prefect server: the
calls are stand-ins that fail as Prefect's client does."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from api.prefect_gateway import PrefectGateway
from store.errors import Conflict, NotFound, Unavailable

CLIENT = object()  # what the gateway hands each call


def status_error(code: int) -> PrefectHTTPStatusError:
    request = httpx.Request("POST", "http://prefect.test/api/flow_runs/")
    response = httpx.Response(code, request=request, json={"detail": "no"})
    return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("no", request=request, response=response))


def raising(error: BaseException):
    async def call(client: object) -> None:
        assert client is CLIENT
        raise error

    return call


async def test_a_call_gets_the_client_and_its_answer():
    async def call(client: object) -> str:
        return "answer" if client is CLIENT else "wrong client"

    assert await PrefectGateway(CLIENT, timeout_s=5).call("read the run", call) == "answer"  # type: ignore[arg-type]


async def test_a_call_that_does_not_answer_in_time_is_prefect_unavailable():
    never = asyncio.Event()

    async def hangs(client: object) -> None:
        await never.wait()

    with pytest.raises(Unavailable) as raised:
        await PrefectGateway(CLIENT, timeout_s=0.2).call("start the run", hangs)  # type: ignore[arg-type]
    assert raised.value.service == "prefect" and "could not start the run" in raised.value.message


@pytest.mark.parametrize(
    "error, expected",
    [
        (httpx.ConnectError("refused"), Unavailable),
        (httpx.ReadTimeout("slow"), Unavailable),
        (status_error(500), Unavailable),
        (status_error(503), Unavailable),
        (status_error(429), Unavailable),
        (status_error(404), NotFound),
        (status_error(409), Conflict),
        (ObjectNotFound(http_exc=status_error(404)), NotFound),
        (ObjectAlreadyExists(http_exc=status_error(409)), Conflict),
    ],
    ids=["refused", "timeout", "500", "503", "429", "404", "409", "not-found", "already-exists"],
)
async def test_prefect_failures_become_domain_errors(error, expected):
    with pytest.raises(expected) as raised:
        await PrefectGateway(CLIENT, timeout_s=5).call("cancel the run", raising(error))  # type: ignore[arg-type]
    if expected is Unavailable:
        assert raised.value.service == "prefect"


async def test_a_client_error_that_means_a_bug_stays_an_error():
    with pytest.raises(PrefectHTTPStatusError):
        gateway = PrefectGateway(CLIENT, timeout_s=5)  # type: ignore[arg-type]
        await gateway.call("read the run", raising(status_error(422)))
