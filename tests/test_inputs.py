"""A run's inputs checked against its plan (builder/inputs.py ``checked_inputs``): the one
check the CLI, the flow's prepare_run and the API's CanvasCompiler share."""

from __future__ import annotations

from builder.inputs import checked_inputs
from builder.issues import InputsInvalid
from tests.support import canvas, compiled, node


def plan_with_inputs():
    return compiled(
        canvas(
            [node("start", "start"), node("end", "end", data={"output": "{{ inputs.who }}"})],
            [("start", "end")],
            inputs={"who": {"type": "string", "required": True}, "times": {"type": "integer", "default": 2}},
        )
    )


def test_the_inputs_with_their_defaults_filled_in():
    assert checked_inputs(plan_with_inputs(), {"who": "Ada"}) == {"who": "Ada", "times": 2}


def test_every_input_that_does_not_fit_is_named_not_raised():
    refused = checked_inputs(plan_with_inputs(), {"times": "x", "typo": 1})
    assert isinstance(refused, InputsInvalid)
    assert {(i.code, i.field) for i in refused.issues} == {
        ("input_missing", "inputs.who"),
        ("input_type", "inputs.times"),
        ("input_unknown", "inputs.typo"),
    }
