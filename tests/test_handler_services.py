"""Handler services (node_handlers/services.py): what http and llm nodes share lives in the
run's context, not in the process: two contexts with different settings do not see each
other's, and a context closes the clients it opened."""

from __future__ import annotations

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
    return NodeContext(node_id="n", path=(), run_id="r", workflow="w", attempt=1, upstream={}, inputs={},
                       emit=lambda kind, data: None, services=services)


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
    raw = canvas([node("start", "start"), node("get", "http", data={"url": f"{counting.url}/engine"},
                                                retry={"max_attempts": 1})], [("start", "get")])
    records = {}
    for allow in ("127.0.0.1", ""):
        services = HandlerServices(HandlerSettings(http_allow_hosts=allow))
        try:
            records[allow] = await Execution(compiled(raw, registry), registry, run_id="r", inputs={},
                                             services=services).run()
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
