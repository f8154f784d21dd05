"""Issue 30, findings 4 (templates and conditions) and 5, and issue 21 bug 1: one owner's
template or condition must not hold the worker, nor build huge values, and a node's
configuration must be the same every time it runs.

Each attack is the pentest's expression; the refusal must come in milliseconds, before
the value is allocated (measured with tracemalloc's peak).
"""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid

import httpx
import pytest

from builder.compiler import compile_canvas
from builder.conditions import evaluate_condition
from builder.templates import TemplateLimits, TemplateRenderError, render_value
from flows.engine import Execution
from tests.support import canvas, compiled, make_registry, node

NESTED_RANGE = "{% for i in range(100000) %}{% for j in range(6000) %}{% endfor %}{% endfor %}"

# Finding 5: each short template asked for tens of megabytes (the first made 50 MB).
OVERSIZE = {
    "percent": "{{ '%050000000d' % 0 }}",
    "format_filter": "{{ '%050000000d' | format(0) }}",
    "str_format": "{{ '{:>50000000}'.format(1) }}",
    "format_map": "{{ '{x:>50000000}'.format_map({'x': 1}) }}",
    "indent": "{{ 'a\na\na\na' | indent(20000000) }}",
    "replace": "{{ ('ab' * 1000) | replace('', 'x' * 50000) }}",
    "join": "{{ (['x' * 500000] * 200) | join }}",
    "join_method": "{{ ('x' * 500000).join(['a'] * 200) }}",
    "batch": "{{ [1] | batch(50000000, 0) | list | length }}",
    "slice": "{{ [1] | slice(50000000) | list | length }}",
    "tilde_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "int_multiply": "{% set ns = namespace(n=7) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
    "{% endfor %}{{ ns.n > 1 }}",
    "str_multiply": "{{ 'x' * 50000000 }}",
    "plus_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "block_buffer": "{% set x %}{% for i in range(100000) %}" + "x" * 200 + "{% endfor %}{% endset %}{{ x | length }}",
    "map_center": "{{ range(100000) | map('center', 900000) | list | length }}",
}


def _refused(template: str) -> tuple[str, float]:
    """The error message and the seconds it took."""
    started = time.perf_counter()
    with pytest.raises(TemplateRenderError) as caught:
        render_value({"body": template}, {})
    return caught.value.message, time.perf_counter() - started


def _peak_bytes(template: str) -> int:
    """The peak bytes allocated while the template is refused (tracemalloc slows the
    render, so the time is measured without it)."""
    tracemalloc.start()
    try:
        with pytest.raises(TemplateRenderError):
            render_value({"body": template}, {})
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(OVERSIZE))
def test_a_short_template_asking_for_a_huge_value_is_refused_before_it_is_built(name):
    message, seconds = _refused(OVERSIZE[name])
    peak = _peak_bytes(OVERSIZE[name])
    assert "refused by the template sandbox" in message
    assert "FLOWMAESTRO_TEMPLATE_MAX" in message or "(over 100,000 bits)" in message  # names the limit
    assert seconds < 5  # today: seconds, and 50 MB+ built
    assert peak < 40_000_000, f"{peak:,} bytes allocated before the refusal"


def test_the_nested_range_loop_runs_out_of_its_step_budget_quickly():
    message, seconds = _refused(NESTED_RANGE)
    assert "budget of 1,000,000 steps" in message and "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in message
    assert seconds < 5  # 19 s on the worker before


def test_exponential_macro_recursion_runs_out_of_budget():
    message, seconds = _refused(
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    )
    assert "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in message
    assert seconds < 5


def test_a_loop_whose_filter_drops_every_item_still_spends_steps():
    message, seconds = _refused(
        "{% for i in range(100000) %}{% for j in range(6000) if false %}{% endfor %}{% endfor %}"
    )
    assert "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in message
    assert seconds < 5


def test_the_budget_is_shared_by_every_string_of_a_configuration():
    loop = "{% for i in range(60000) %}{% endfor %}"
    limits = TemplateLimits(max_steps=100_000)
    render_value({"a": loop}, {}, limits=limits)
    with pytest.raises(TemplateRenderError) as caught:
        render_value({"a": loop, "b": loop}, {}, limits=limits)
    assert caught.value.field == "data.b"


def test_ordinary_templates_and_formatting_still_work():
    scope = {"inputs": {"n": 3, "items": ["a", "b"], "text": "x\ny"}}
    assert (
        render_value(
            "{{ '%05d' % inputs.n }} {{ '{:>4}'.format(inputs.n) }} {{ inputs.items | join(',') }}"
            " {{ inputs.text | indent(2) }} {{ [[1], [2]] | sum(start=[]) }}",
            scope,
        )
        == "00003    3 a,b x\n  y [1, 2]"
    )
    assert render_value("{{ inputs.items * 2 }}", scope) == ["a", "b", "a", "b"]
    big = "y" * 2_000_000  # data read as is is never refused: only what a template builds
    assert render_value("{{ inputs.big }}", {"inputs": {"big": big}}) is big


def test_the_pentest_regex_completes_in_linear_time():
    started = time.perf_counter()
    assert evaluate_condition("a" * 28 + "!", "matches", "^(a+)+$") is False  # 10 s with Python's re
    assert evaluate_condition("a" * 100_000 + "!", "matches", "^(a+)+$") is False
    assert time.perf_counter() - started < 5
    assert evaluate_condition("order-123", "matches", r"^order-\d+$") is True


def _compile_errors(raw):
    return [
        (issue.code, issue.node_id, issue.edge_id, issue.field, issue.message)
        for issue in compile_canvas(raw, make_registry()).errors
    ]


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=a)a", "(?<!b)a"])
def test_a_pattern_re2_cannot_run_is_a_compile_time_issue_naming_the_edge_and_field(pattern):
    raw = canvas(
        [node("a"), node("b")],
        [
            {
                "id": "e1",
                "source": "a",
                "target": "b",
                "data": {"condition": {"field": "{{ a }}", "operator": "matches", "value": pattern}},
            }
        ],
    )
    [(code, _, edge_id, field, message)] = _compile_errors(raw)
    assert (code, edge_id, field) == ("invalid_pattern", "e1", "data.condition.value")
    assert "backreferences and lookaround are not supported" in message


@pytest.mark.parametrize(
    ("template", "what"),
    [
        ("{{ lipsum(1) }}", "lipsum"),
        ("{{ [1, 2, 3] | random }}", "random filter"),
        ("{% for x in [1] %}{{ lipsum() }}{% endfor %}", "lipsum"),
    ],
)
def test_non_deterministic_names_are_refused_at_compile_time(template, what):
    raw = canvas([node("a", data={"output": template})])
    [(_, node_id, _, field, message)] = _compile_errors(raw)
    assert (node_id, field) == ("a", "data.output")
    assert what in message and "run again after a crash or retry" in message


async def test_a_node_whose_template_exceeds_the_budget_fails_with_the_limit_in_its_error():
    registry = make_registry()
    plan = compiled(
        canvas([node("heavy", data={"output": NESTED_RANGE}), node("big", data={"output": OVERSIZE["percent"]})]),
        registry,
    )
    started = time.perf_counter()
    record = await Execution(plan, registry, run_id="dos-1", inputs={}).run()
    result = record.result()
    assert time.perf_counter() - started < 10
    assert result["nodes"]["heavy"]["status"] == "failed"
    assert "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in result["nodes"]["heavy"]["error"]["message"]
    assert "FLOWMAESTRO_TEMPLATE_MAX_CHARS" in result["nodes"]["big"]["error"]["message"]


async def test_a_node_output_over_the_limit_fails_the_node_before_it_is_kept():
    registry = make_registry()
    # 40 strings of 900,000 characters: each within the template limit, 36 MB together.
    plan = compiled(canvas([node("wide", data={"output": ["{{ 'x' * 900000 }}"] * 40})]), registry)
    record = await Execution(
        plan,
        registry,
        run_id="dos-2",
        inputs={},
        max_node_output_bytes=16_000_000,
        template_limits=TemplateLimits(max_steps=10**8),
    ).run()
    result = record.result()
    assert result["nodes"]["wide"]["status"] == "failed"
    assert result["nodes"]["wide"]["error"]["type"] == "OutputTooLarge"
    assert "FLOWMAESTRO_MAX_NODE_OUTPUT_BYTES" in result["nodes"]["wide"]["error"]["message"]


def _save(api: httpx.Client, key: str, raw: dict) -> str:
    workflow = api.post("/api/workflows", json={"canvas": raw}, headers={"Authorization": f"Bearer {key}"})
    assert workflow.status_code in (200, 201), workflow.text
    return workflow.json()["id"]


def _start(api: httpx.Client, key: str, workflow_id: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    started = api.post(f"/api/workflows/{workflow_id}/execute", json={}, headers=headers)
    assert started.status_code in (200, 201, 202), started.text
    return started.json()["execution_id"]


def _wait(api: httpx.Client, key: str, execution_id: str, statuses: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + 300
    body: dict = {}
    while time.monotonic() < deadline:
        body = api.get(f"/api/executions/{execution_id}", headers={"Authorization": f"Bearer {key}"}).json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.1)  # polling an external process's state, not synchronising on time
    raise AssertionError(f"execution {execution_id} never reached {statuses}: {body}")


@pytest.mark.prefect
def test_another_owners_run_is_not_held_by_a_heavy_template_on_the_same_worker(served):
    """Bob's node loops 6e8 times (19 s of the worker's event loop before); Alice's simple
    run, started while Bob's runs on the same worker, takes about as long as alone."""
    simple = canvas(
        [node("start", "start"), node("hello", data={"output": "hi {{ run.id }}"})],
        [("start", "hello")],
        name=f"alice-{uuid.uuid4().hex[:6]}",
    )
    heavy = canvas(
        [node("start", "start")] + [node(f"heavy{i}", data={"output": NESTED_RANGE}) for i in range(3)],
        [("start", f"heavy{i}") for i in range(3)],
        name=f"bob-{uuid.uuid4().hex[:6]}",
    )
    alice, bob = served.other_key, served.owner_key
    with httpx.Client(base_url=served.base, timeout=120) as api:
        simple, heavy = _save(api, alice, simple), _save(api, bob, heavy)
        started = time.monotonic()
        _wait(api, alice, _start(api, alice, simple), ("completed",))
        alone = time.monotonic() - started

        bob_run = _start(api, bob, heavy)
        _wait(api, bob, bob_run, ("running", "failed", "completed"))
        started = time.monotonic()
        _wait(api, alice, _start(api, alice, simple), ("completed",))
        meanwhile = time.monotonic() - started

        bob_result = _wait(api, bob, bob_run, ("failed", "completed"))
    assert bob_result["status"] == "failed"
    assert "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in json.dumps(bob_result)
    # Before: another owner's 1 s run took 19 s beside one such template (this one has three).
    assert meanwhile < alone + 15, f"alone {alone:.1f} s, beside the heavy run {meanwhile:.1f} s"


# Finding 4, second round: one step per filter call, whatever its input, let a loop of
# 2,000 calls on a 100,000-item list hold the worker for seconds to minutes (default
# limits: 3.5 s for the pentest's 2,000 `in`, 69 s for 2,000 `max`, measured before the fix).
SCANNING = {
    "in_list": "{% set l = range(100000)|list %}{% for i in range(2000) %}{{ (-1 in l)|int }}{% endfor %}",
    "in_list_longer": "{% set l = range(100000)|list %}{% for i in range(10000) %}{{ (-1 in l)|int }}{% endfor %}",
    "max_of_range": "{% for i in range(2000) %}{{ range(100000)|max }}{% endfor %}",
    "sort": "{% set l = range(100000)|list|reverse|list %}{% for i in range(2000) %}{{ l|sort|first }}{% endfor %}",
    "max_of_string": "{% set s = 'ab ' * 300000 %}{% for i in range(2000) %}{{ s|max }}{% endfor %}",
    "selectattr": "{% set l = range(100000)|list %}{% for i in range(2000) %}{{ l|selectattr('real')|list|length }}"
    "{% endfor %}",
    "big_int_division": "{% set x = 2 ** 49000 %}{% set y = 3 ** 30000 %}{% for i in range(100000) %}"
    "{% if x // y %}{% endif %}{% endfor %}",
    "unique": "{% set l = range(100000)|list %}{% for i in range(2000) %}{{ l|unique|list|length }}{% endfor %}",
    "in_string": "{% set s = 'ab' * 400000 %}{% for i in range(900) %}{% for j in range(1000) %}"
    "{% if 'c' in s %}x{% endif %}{% endfor %}{% endfor %}",
    "str_count": "{% set s = 'ab' * 400000 %}{% for i in range(100000) %}{{ s.count('c') }}{% endfor %}",
    "equal_lists": "{% set a = range(100000)|list %}{% set b = range(100000)|list %}"
    "{% for i in range(100000) %}{{ a == b }}{% endfor %}",
    "is_in_test": "{% set l = range(100000)|list %}{% for i in range(100000) %}{{ -1 is in l }}{% endfor %}",
    "slice_copy": "{% set l = range(100000)|list %}{% for i in range(100000) %}{{ l[1:]|length }}{% endfor %}",
    "loop_as_list": "{% for x in range(1000) %}{% for y in range(100000) %}{{ loop|list|length }}{% endfor %}"
    "{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(SCANNING))
def test_a_loop_of_operations_on_a_big_value_runs_out_of_budget_quickly(name):
    message, seconds = _refused(SCANNING[name])
    assert "budget of 1,000,000 steps" in message and "FLOWMAESTRO_TEMPLATE_MAX_STEPS" in message
    assert seconds < 15, f"{seconds:.1f} s"  # about 1 s here; minutes for some before


def test_the_length_of_a_big_list_in_a_loop_finishes_quickly():
    """``length`` does not read the list: it is not charged by its size."""
    started = time.perf_counter()
    assert render_value(
        "{% set l = range(100000)|list %}{% for i in range(20000) %}{{ l|length }}{% endfor %}", {}
    ).startswith("100000100000")
    assert time.perf_counter() - started < 15


def test_ordinary_operations_on_data_keep_their_results():
    scope = {"inputs": {"ids": [1, 2, 3], "text": "a,b,a", "rows": [{"k": 2}, {"k": 1}], "m": {"x": 1}}}
    assert (
        render_value(
            "{{ 2 in inputs.ids }} {{ 'x' in inputs.m }} {{ inputs.text.count('a') }} "
            "{{ inputs.ids[1:] }} {{ inputs.ids[::-1] }} {{ inputs.rows|sort(attribute='k')|map(attribute='k')|join }} "
            "{{ inputs.ids|select('in', [1, 3])|list }} {{ inputs.ids == [1, 2, 3] }} "
            "{{ inputs.text.split(',')|unique|list }} {{ 'b' not in inputs.text }}",
            scope,
        )
        == 'true true 2 [2, 3] [3, 2, 1] 12 [1, 3] true ["a", "b"] false'
    )
