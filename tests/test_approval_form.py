"""What the Prefect UI's Resume form of an approval shows (issue 31, minor 15): the approval's
message above the fields (Prefect shows a RunInput's description, not its schema's), and an
optional field as a field of its type, not a toggle between the type and null. Checked
where the UI reads them: the run inputs Prefect stores for a pause (its keyset's
``schema`` and ``description``), on the session's Prefect server."""

from __future__ import annotations

import pytest
from prefect import flow, get_client
from prefect.input import RunInput, keyset_from_base_key, read_flow_run_input
from pydantic import ValidationError

from node_handlers.approval import form_model

FORM = {
    "reason": {"type": "string", "description": "Why"},
    "amount": {"type": "number", "required": True},
    "level": {"type": "string", "enum": ["low", "high"]},
}


@flow
def never_runs() -> None:  # a flow run to hang the inputs on; it is never executed
    pass


@pytest.mark.prefect
async def test_the_resume_form_shows_the_message_and_optional_fields_as_their_type(prefect_server) -> None:
    model = form_model(FORM, "Refund **42 EUR** to Ada?", base=RunInput)
    async with get_client() as client:
        run = await client.create_flow_run(never_runs)
    keyset = keyset_from_base_key("paused-approval-test")
    await model.save(keyset, flow_run_id=run.id)

    assert await read_flow_run_input(keyset["description"], flow_run_id=run.id) == "Refund **42 EUR** to Ada?"
    schema = await read_flow_run_input(keyset["schema"], flow_run_id=run.id)
    fields = schema["properties"]
    assert schema["required"] == ["approved", "amount"]
    assert fields["reason"]["type"] == "string" and fields["reason"]["description"] == "Why"
    assert fields["level"]["enum"] == ["low", "high"] and fields["level"]["type"] == "string"
    assert all("anyOf" not in field for field in fields.values()), fields


def test_the_form_validates_as_before() -> None:
    model = form_model(FORM, "Refund?", base=RunInput)
    assert model.model_validate({"approved": True, "amount": 3}).model_dump() == {
        "approved": True,
        "amount": 3.0,
        "reason": None,
        "level": None,
    }
    assert model.model_validate({"approved": False, "amount": 1, "reason": None}).reason is None  # type: ignore[attr-defined]
    for wrong in ({"approved": "yes", "amount": 1}, {"approved": True}, {"approved": True, "amount": 1, "other": 1}):
        with pytest.raises(ValidationError):
            model.model_validate(wrong)
    # Without Prefect's RunInput (the API's own check of a decision) the message is the docstring.
    assert form_model(FORM, "Refund?").__doc__ == "Refund?"
