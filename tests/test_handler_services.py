"""Handler services (node_handlers/services.py): what http and llm nodes share lives in the
run's context, not in the process: two contexts with different settings do not see each
other's, and a context closes the clients it opened."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from flows.engine import Execution
from flows.run_context import RunContext
from node_handlers.base import NodeContext
from node_handlers.egress import EgressDenied
from node_handlers.http import HttpConfig, HttpHandler
from node_handlers.services import HandlerServices
from node_handlers.settings import HandlerSettings
from tests.support import canvas, compiled, make_registry, node


def context_with(services: HandlerServices) -> NodeContext:
    return NodeContext(
        node_id="n",
        path=(),
        run_id="r",
        workflow="w",
        attempt=1,
        upstream={},
        inputs={},
        emit=lambda kind, data: None,
        services=services,
    )


async def test_two_contexts_in_one_process_keep_their_own_egress_policy(counting):
    allowing = HandlerServices(HandlerSettings(http_allow_hosts="127.0.0.1"))
    refusing = HandlerServices(HandlerSettings(http_allow_hosts=""))
    config = HttpConfig.model_validate({"url": f"{counting.url}/services"})
    try:
        completed = await HttpHandler().run(config, context_with(allowing))
        assert completed.output["status"] == 200
        with pytest.raises(EgressDenied):
            await HttpHandler().run(config, context_with(refusing))
        assert counting.counts["/services"] == 1
    finally:
        await allowing.close()
        await refusing.close()


async def test_clients_are_pooled_per_services_and_closed_with_them():
    services = HandlerServices(HandlerSettings())
    client = services.http_client()
    assert services.http_client() is client
    assert HandlerServices(HandlerSettings()).http_client() is not client
    await services.close()
    assert client.is_closed
    assert services.http_client() is not client  # a new one after closing


async def test_the_engine_hands_the_runs_services_to_every_node(counting):
    """Whatever the environment says: one of the two runs would be wrong without them."""
    registry = make_registry()
    raw = canvas(
        [
            node("start", "start"),
            node("get", "http", data={"url": f"{counting.url}/engine"}, retry={"max_attempts": 1}),
        ],
        [("start", "get")],
    )
    records = {}
    for allow in ("127.0.0.1", ""):
        services = HandlerServices(HandlerSettings(http_allow_hosts=allow))
        try:
            records[allow] = await Execution(
                compiled(raw, registry), registry, run_id="r", inputs={}, services=services
            ).run()
        finally:
            await services.close()
    assert records["127.0.0.1"].status == "completed", records["127.0.0.1"].error
    assert records[""].status == "failed" and records[""].nodes["get"].error["type"] == "EgressDenied"
    assert counting.counts["/engine"] == 1


async def test_a_run_context_closes_its_handler_services():
    context = RunContext.from_environment()
    services = HandlerServices(HandlerSettings())
    context = dataclasses.replace(context, services=services)
    client = services.http_client()
    await context.close()
    assert client.is_closed


async def test_one_client_per_services_and_another_for_other_settings():
    """(Was the process's shared client: replaced when the policy changed.)"""
    services, other = (
        HandlerServices(HandlerSettings()),
        HandlerServices(HandlerSettings(http_allow_hosts="10.0.0.0/8")),
    )
    try:
        first = services.http_client()
        assert services.http_client() is first
        assert other.http_client() is not first
    finally:
        await services.close()
        await other.close()


def test_each_event_loop_gets_its_own_client():
    services = HandlerServices(HandlerSettings())

    async def client_of_this_loop():
        try:
            return services.http_client()
        finally:
            await services.close()  # as a context does before its loop ends

    first = asyncio.run(client_of_this_loop())
    second = asyncio.run(client_of_this_loop())  # the first loop is closed now
    assert second is not first and first.is_closed and second.is_closed


async def test_a_handler_called_on_its_own_closes_the_services_it_built(counting, monkeypatch):
    """Without services (a handler called directly), the call builds them from the
    environment and closes them when it ends: no client is left to the process."""
    built: list[HandlerServices] = []

    def from_environment() -> HandlerServices:
        built.append(HandlerServices(HandlerSettings(http_allow_hosts="127.0.0.1")))
        return built[-1]

    monkeypatch.setattr(HandlerServices, "from_environment", staticmethod(from_environment))
    alone = NodeContext(
        node_id="n", path=(), run_id="r", workflow="w", attempt=1, upstream={}, inputs={}, emit=lambda kind, data: None
    )
    completed = await HttpHandler().run(HttpConfig.model_validate({"url": f"{counting.url}/alone"}), alone)
    assert completed.output["status"] == 200
    [services] = built
    assert services._clients == {}, "the throwaway services were not closed"
