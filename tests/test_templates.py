"""Templates in node configuration: rendering, expressions, the sandbox, and reference finding."""

import copy
from types import MappingProxyType

import pytest

from builder import templates
from builder.templates import (
    EnvNamespace,
    TemplateError,
    TemplateRefs,
    TemplateRenderError,
    analysis,
    evaluate_expression,
    find_references,
    is_template,
    render_value,
    token_reader,
)


def make_scope(**extra):
    fetch = {"status": 200, "body": {"items": [{"name": "first"}, {"name": "second"}], "total": 2}}
    scope = {
        "inputs": {
            "name": "Ada",
            "count": 3,
            "score": 0.75,
            "tags": ["a", "b"],
            "options": {"x": 1},
            "nothing": None,
            "flag": True,
        },
        "var": {"greeting": "hi"},
        "env": EnvNamespace({"API_URL": "https://api", "SECRET_KEY": "s3cret"}, frozenset({"API_URL", "REGION"})),
        "run": {"id": "run-1"},
        "loop": {"index": 0, "item": {"id": 7}},
        "parallel": {},
        "fetch": fetch,
        "nodes": {"fetch": fetch, "my-node": {"x": 42}, "other": {"y": "why"}},
    }
    scope.update(extra)
    return scope


def render_error(value, scope=None, **kwargs) -> str:
    with pytest.raises(TemplateRenderError) as caught:
        render_value(value, make_scope() if scope is None else scope, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------- plain strings


@pytest.mark.parametrize("text", ["plain text", "", "{ not a template }", "50% off", "{# comment-looking #}"])
def test_strings_without_template_syntax_are_returned_as_is(text):
    assert render_value(text, make_scope()) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{{ x }}", True), ("a {% if x %}b{% endif %}", True), ("{ x }", False), ("{#x#}", False), ("", False)],
)
def test_is_template(text, expected):
    assert is_template(text) is expected


def test_non_string_values_pass_through():
    assert render_value(5, make_scope()) == 5
    assert render_value(None, make_scope()) is None
    assert render_value(True, make_scope()) is True


# --------------------------------------------------------------------------- type preservation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ inputs.count }}", 3),
        ("{{ inputs.score }}", 0.75),
        ("{{ inputs.options }}", {"x": 1}),
        ("{{ inputs.tags }}", ["a", "b"]),
        ("{{ inputs.nothing }}", None),
        ("{{ inputs.flag }}", True),
        ("{{ inputs.count + 1 }}", 4),
        ("{{ inputs.count > 2 }}", True),
        ("  {{ inputs.count }}\n", 3),
        ("{{- inputs.count -}}", 3),
        ("{{ none }}", None),
        ("{{ [inputs.count, inputs.name] }}", [3, "Ada"]),
        ("{{ {'n': inputs.count} }}", {"n": 3}),
        ("{{ fetch.body['items'] | map(attribute='name') }}", ["first", "second"]),
        ("{{ range(3) }}", [0, 1, 2]),
    ],
)
def test_a_lone_expression_keeps_its_type(text, expected):
    result = render_value(text, make_scope())
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello {{ inputs.name }}!", "Hello Ada!"),
        ("{{ inputs.count }} items", "3 items"),
        ("{{ inputs.name }}{{ inputs.count }}", "Ada3"),
        ("{{ inputs.count }} {{ inputs.count }}", "3 3"),
        ("{% if inputs.flag %}yes{% else %}no{% endif %}", "yes"),
        ("{% for t in inputs.tags %}[{{ t }}]{% endfor %}", "[a][b]"),
        ("{{ inputs.name | upper }} says {{ var.greeting }}", "ADA says hi"),
    ],
)
def test_other_templates_render_to_strings(text, expected):
    assert render_value(text, make_scope()) == expected


def test_objects_and_literals_are_written_as_json_inside_text():
    text = "body={{ inputs.options }} tags={{ inputs.tags }} flag={{ inputs.flag }} none={{ inputs.nothing }}"
    assert render_value(text, make_scope()) == 'body={"x": 1} tags=["a", "b"] flag=true none=null'


def test_trailing_newline_is_kept():
    assert render_value("Dear {{ inputs.name }},\n", make_scope()) == "Dear Ada,\n"


# --------------------------------------------------------------------------- lookups


def test_mapping_keys_win_over_dict_methods():
    scope = make_scope(a={"items": [{"name": "x"}], "keys": "K", "values": [1], "get": "G"})
    assert render_value("{{ a.items[0].name }}", scope) == "x"
    assert render_value("{{ a.keys }}", scope) == "K"
    assert render_value("{{ a.values }}", scope) == [1]
    assert render_value("{{ a.get }}", scope) == "G"


def test_dict_methods_still_work_when_not_shadowed():
    assert render_value("{{ inputs.options.keys() }}", make_scope()) == ["x"]
    assert render_value("{{ inputs.options.get('missing', 'dflt') }}", make_scope()) == "dflt"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{{ nodes["my-node"].x }}', 42),
        ("{{ nodes['my-node']['x'] }}", 42),
        ("{{ nodes.other.y }}", "why"),
        ("{{ fetch.body.total }}", 2),
        ("{{ loop.item.id }}", 7),
        ("{{ fetch.body['items'][1].name }}", "second"),
    ],
)
def test_node_outputs_are_reachable(text, expected):
    assert render_value(text, make_scope()) == expected


def test_optional_values_can_be_guarded():
    assert render_value("{{ fetch.maybe | default('none') }}", make_scope()) == "none"
    assert render_value("{{ fetch.maybe is defined }}", make_scope()) is False
    assert render_value("{% if fetch.maybe is defined %}x{% endif %}", make_scope()) == ""


def test_any_mapping_works_as_scope():
    assert render_value("{{ inputs.count }}", MappingProxyType(make_scope())) == 3


# --------------------------------------------------------------------------- errors


def test_missing_attribute_names_the_field_and_the_owner():
    message = render_error({"url": "{{ fetch.bodyy }}"})
    assert message.startswith("data.url: 'fetch' has no attribute 'bodyy'")
    assert "did you mean 'body'" in message


def test_missing_attribute_inside_text_names_the_full_path():
    message = render_error({"url": "https://x/{{ fetch.body.totl }}"})
    assert message.startswith("data.url: 'fetch.body' has no attribute 'totl'")


def test_missing_name_is_reported():
    message = render_error({"prompt": "Hi {{ fetchh.body }}"})
    assert message.startswith("data.prompt: 'fetchh' is not defined")
    assert "did you mean 'fetch'" in message


def test_missing_node_key_is_reported():
    message = render_error('{{ nodes["nope"].x }}')
    assert message.startswith("data: 'nodes' has no attribute 'nope'")


def test_missing_list_element_says_how_many_there_are():
    message = render_error("{{ fetch.body['items'][5] }}")
    assert message == "data: 'fetch.body[\"items\"]' has no element 5 (it has 2 items)"


def test_attribute_of_null_says_it_is_null():
    message = render_error("{{ inputs.nothing.x }}")
    assert message == "data: 'inputs.nothing' is null, so it has no attribute 'x'"


def test_missing_attribute_of_a_loop_variable():
    message = render_error("{% for it in fetch.body['items'] %}{{ it.nam }}{% endfor %}")
    assert message.startswith("data: 'it' has no attribute 'nam'")


def test_missing_value_inside_a_built_container_is_an_error():
    assert "'fetch' has no attribute 'nope'" in render_error("{{ [fetch.nope] }}")
    assert "has no attribute 'nope'" in render_error("{{ fetch.body['items'] | map(attribute='nope') | list }}")


def test_error_messages_have_no_jinja_jargon():
    for text in ("{{ fetch.bodyy }}", "{{ missing }}", "x {{ fetch.body.nope }}", "{{ inputs.tags[9] }}"):
        message = render_error(text)
        assert "jinja" not in message.lower()
        assert "Undefined" not in message
        assert "dict object" not in message


def test_nested_field_paths():
    value = {"conditions": [{"value": "ok"}, {"value": "{{ nope }}"}]}
    assert render_error(value).startswith("data.conditions[1].value: 'nope' is not defined")
    assert render_error({"h": ["{{ nope }}"]}, field="config").startswith("config.h[0]:")


def test_error_carries_message_and_field_separately():
    with pytest.raises(TemplateRenderError) as caught:
        render_value({"url": "{{ fetch.bodyy }}"}, make_scope())
    assert caught.value.field == "data.url"
    assert caught.value.message.startswith("'fetch' has no attribute 'bodyy'")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ 1 / 0 }}", "data: division by zero"),
        ("{{ inputs.name + 1 }}", "data: "),
        ("Hi {{ inputs.name | nosuchfilter }}", "data: template syntax error: No filter named 'nosuchfilter'"),
        ("{{ inputs.name ", "data: template syntax error"),
    ],
)
def test_runtime_and_syntax_failures_become_render_errors(text, expected):
    assert render_error(text).startswith(expected)


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "x {{ ''.__class__ }}",
        "{{ inputs.__class__.__init__.__globals__ }}",
        "{{ inputs.count.__class__ }}",
        "{{ inputs.tags.append(1) }}",
        "{{ inputs.options.update({'x': 2}) }}",
        "{{ '{0.__class__}'.format(inputs) }}",
    ],
)
def test_sandbox_refuses_escapes_and_mutation(text):
    scope = make_scope()
    before = copy.deepcopy({k: v for k, v in scope.items() if k != "env"})
    message = render_error(text, scope)
    assert "refused by the template sandbox" in message
    assert {k: v for k, v in scope.items() if k != "env"} == before


def test_sandbox_message_format():
    assert render_error({"prompt": "{{ ''.__class__ }}"}) == (
        "data.prompt: refused by the template sandbox: access to attribute '__class__' of 'str' object is unsafe"
    )


# --------------------------------------------------------------------------- containers


def test_render_value_walks_dicts_and_lists_without_touching_keys_or_input():
    value = {"{{ inputs.name }}": ["{{ inputs.count }}", {"n": "{{ inputs.name }}"}, 7], "plain": "x"}
    original = copy.deepcopy(value)
    result = render_value(value, make_scope())
    assert result == {"{{ inputs.name }}": [3, {"n": "Ada"}, 7], "plain": "x"}
    assert value == original
    assert result is not value


# --------------------------------------------------------------------------- expressions


def test_render_value_returns_plain_containers_for_read_only_ones():
    from builder.plan import freeze

    frozen = freeze({"a": ["{{ inputs.count }}", {"b": ("{{ inputs.name }}", 1)}], "c": "plain"})
    rendered = render_value(frozen, make_scope())
    assert rendered == {"a": [3, {"b": ["Ada", 1]}], "c": "plain"}
    assert type(rendered) is dict and type(rendered["a"]) is list and type(rendered["a"][1]["b"]) is list
    rendered["a"].append(4)  # the result belongs to the caller
    assert render_value(MappingProxyType({"t": ("x",)}), make_scope()) == {"t": ["x"]}


@pytest.mark.parametrize("text", ["inputs.score > 0.5", "{{ inputs.score > 0.5 }}", "  {{inputs.score > 0.5}} "])
def test_expression_bare_or_wrapped(text):
    assert evaluate_expression(text, make_scope()) is True


def test_expression_keeps_type():
    assert evaluate_expression("inputs.count * 2", make_scope()) == 6
    assert evaluate_expression("inputs.tags", make_scope()) == ["a", "b"]
    assert evaluate_expression('nodes["my-node"].x', make_scope()) == 42


def test_expression_keys_in_render_value():
    value = {
        "conditions": [{"expression": "inputs.count >= 3", "label": "inputs.count >= 3"}],
        "condition": "{{ loop.index < 10 }}",
        "other": 5,
    }
    result = render_value(value, make_scope(), expression_keys=frozenset({"expression", "condition"}))
    assert result == {"conditions": [{"expression": True, "label": "inputs.count >= 3"}], "condition": True, "other": 5}


def test_expression_key_with_non_string_value_is_left_alone():
    assert render_value({"expression": True}, make_scope(), expression_keys=frozenset({"expression"})) == {
        "expression": True
    }


def test_expression_errors_name_the_field():
    value = {"conditions": [{"expression": "inputs.scor > 0.5"}]}
    message = render_error(value, expression_keys=frozenset({"expression"}))
    assert message.startswith("data.conditions[0].expression: 'inputs' has no attribute 'scor'")
    with pytest.raises(TemplateRenderError, match=r"^expression: 'missing' is not defined"):
        evaluate_expression("missing > 1", make_scope())
    with pytest.raises(TemplateRenderError, match=r"^cond: "):
        evaluate_expression("missing", make_scope(), field="cond")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the expression is empty"),
        ("{{ }}", "the expression is empty"),
        ("inputs.score >", "syntax error"),
        ("inputs.score inputs.count", "syntax error"),
        ("{{ inputs.score }} > {{ inputs.count }}", "expected one expression"),
    ],
)
def test_bad_expressions(text, expected):
    with pytest.raises(TemplateRenderError) as caught:
        evaluate_expression(text, make_scope())
    assert expected in str(caught.value)


def test_missing_top_level_name_always_raises_in_expressions():
    with pytest.raises(TemplateRenderError, match="'ghost' is not defined"):
        evaluate_expression("ghost", make_scope())
    with pytest.raises(TemplateRenderError, match="'ghost' is not defined"):
        render_value("{{ ghost }}", make_scope())


# --------------------------------------------------------------------------- env


def test_env_namespace_exposes_only_allowlisted_names_that_exist():
    env = EnvNamespace({"API_URL": "https://api", "SECRET_KEY": "s3cret"}, frozenset({"API_URL", "REGION"}))
    assert dict(env) == {"API_URL": "https://api"}
    assert len(env) == 1
    assert list(env) == ["API_URL"]
    assert "API_URL" in env
    assert "SECRET_KEY" not in env
    assert "REGION" not in env
    assert env.get("REGION", "eu") == "eu"
    assert env["API_URL"] == "https://api"
    with pytest.raises(KeyError):
        env["REGION"]
    with pytest.raises(TemplateRenderError, match=r"^env\.SECRET_KEY is not in FLOWMAESTRO_ENV_ALLOWLIST$"):
        env["SECRET_KEY"]
    assert "s3cret" not in repr(env)


def test_env_in_templates():
    assert render_value("{{ env.API_URL }}/v1", make_scope()) == "https://api/v1"
    assert render_value("{{ env['API_URL'] }}", make_scope()) == "https://api"


@pytest.mark.parametrize("text", ["{{ env.SECRET_KEY }}", "{{ env['SECRET_KEY'] }}", "x {{ env.get('SECRET_KEY') }}"])
def test_env_outside_allowlist_explains_why(text):
    assert render_error({"url": text}) == "data.url: env.SECRET_KEY is not in FLOWMAESTRO_ENV_ALLOWLIST"


def test_env_allowlisted_but_unset():
    assert render_error("{{ env.REGION }}") == (
        "data: env.REGION is in FLOWMAESTRO_ENV_ALLOWLIST but is not set in the environment"
    )
    assert render_value("{{ env.REGION | default('eu') }}", make_scope()) == "eu"


# --------------------------------------------------------------------------- find_references


def refs_by_field(value, **kwargs) -> dict[str, TemplateRefs]:
    return {refs.field: refs for refs in find_references(value, **kwargs)}


def test_find_references_collects_names_and_node_keys():
    found = refs_by_field(
        {
            "url": "https://x/{{ fetch.body.id }}?q={{ inputs.q }}",
            "a": '{{ nodes["my-node"].x }}',
            "b": "{{ nodes['other'].y + nodes.third.z }}",
            "c": "{{ loop.index }} of {{ parallel.count }} {{ var.x }} {{ env.A }} {{ run.id }}",
        }
    )
    assert found["data.url"] == TemplateRefs("data.url", frozenset({"fetch", "inputs"}), frozenset(), None)
    assert found["data.a"].names == {"nodes"}
    assert found["data.a"].node_keys == {"my-node"}
    assert found["data.b"].node_keys == {"other", "third"}
    assert found["data.c"].names == {"loop", "parallel", "var", "env", "run"}


def test_plain_strings_and_non_strings_produce_nothing():
    assert find_references({"a": "plain", "b": 3, "c": [None, "x"], "d": {}}) == []


def test_names_bound_inside_the_template_are_not_reported():
    found = refs_by_field(
        {
            "for": "{% for item in fetch.items %}{{ item.name }}{{ loop.index }}{% endfor %}",
            "set": "{% set total = inputs.a + 1 %}{{ total }}",
        }
    )
    assert found["data.for"].names == {"fetch"}
    assert found["data.set"].names == {"inputs"}


def test_loop_namespace_outside_a_for_is_reported():
    assert refs_by_field({"x": "{{ loop.index }}"})["data.x"].names == {"loop"}


def test_the_names_jinja_provides_are_those_of_the_environment():
    # lipsum is refused (not deterministic) but stays a Jinja name: no node may take it as id.
    assert templates.JINJA_GLOBALS == set(templates.get_environment().globals) | {"self", "lipsum"}


def test_jinja_constants_and_globals_are_not_names():
    found = refs_by_field({"a": "{{ true }} {{ none }}", "b": "{% for i in range(3) %}{{ i }}{% endfor %}"})
    assert found["data.a"].names == set()
    assert found["data.b"].names == set()


def test_syntax_errors_are_reported_with_field_and_line():
    found = refs_by_field({"steps": [{"prompt": "line one\n{{ inputs.name "}]})
    refs = found["data.steps[0].prompt"]
    assert refs.names == set() and refs.node_keys == set()
    assert isinstance(refs.error, TemplateError)
    assert refs.error.field == "data.steps[0].prompt"
    assert refs.error.lineno == 2
    assert "syntax error" in refs.error.message
    assert "data.steps" not in refs.error.message
    assert str(refs.error).startswith("data.steps[0].prompt: ")


def test_unknown_filter_is_a_compile_time_error():
    refs = refs_by_field({"a": "{{ inputs.name | shout }}"})["data.a"]
    assert refs.error is not None
    assert "shout" in refs.error.message


def test_find_references_on_expressions():
    value = {
        "conditions": [{"expression": "inputs.score > fetch.min"}, {"expression": "{{ nodes['x'].ok }}"}],
        "label": "inputs.unused",
    }
    found = refs_by_field(value, expression_keys=frozenset({"expression"}))
    assert set(found) == {"data.conditions[0].expression", "data.conditions[1].expression"}
    assert found["data.conditions[0].expression"].names == {"inputs", "fetch"}
    assert found["data.conditions[1].expression"].node_keys == {"x"}


def test_find_references_reports_bad_expressions():
    found = refs_by_field({"expression": "inputs.a >", "e2": ""}, expression_keys=frozenset({"expression", "e2"}))
    assert "syntax error" in found["data.expression"].error.message
    assert found["data.e2"].error.message == "the expression is empty"


def test_find_references_custom_root_field():
    found = find_references({"field": "{{ a.x }}", "value": 3}, field="data.condition")
    assert [refs.field for refs in found] == ["data.condition.field"]


@pytest.mark.parametrize(
    "text",
    [
        "{{ a }}",
        "{{a.b.c}}",
        "x {{ a.b }} y {{ c['d'] }}",
        '{{ nodes["my-node"].x }} and {{ nodes.other }}',
        "{{ nodes[0] }}",
        "{{ nodes }}",
        "{{ range }}",
        "{{ self }}",
        "}} {{ a }} }}",
        "{{ a[1][2] }}",
        "{{ a }}{{ b }}",
        "{{{ a }}",
        "{{ a }} {# c #}",
        "{{ true }}",
        "{{ a.0 }}",
        "{{ a . b }}",
        '{{ nodes[""] }}',
        "{{ nodes.z[0] }}",
        "{{ nodes[1] }}",
        "{{- a }}",
        "{{ a[01] }}",
        "{{ a[007] }}",
        '{{ nodes["{x"] }}',
        "{{ a -}} b",
    ],
)
def test_fast_reference_path_agrees_with_the_parser(text):
    parsed = analysis.analyse_parsed(text, False)
    fast = analysis.analyse_tokens(text, False)
    assert fast is None or fast == parsed


@pytest.mark.parametrize(
    "text", ["a", " a.b ", "{{ nodes['k'].v }}", "nodes.k", "true", "a b", "a.b > 1", "{{ a }} {{ b }}", "", "a[01]"]
)
def test_fast_reference_path_agrees_with_the_parser_for_expressions(text):
    parsed = analysis.analyse_parsed(text, True)
    fast = analysis.analyse_tokens(text, True)
    assert fast is None or fast == parsed


TOKEN_READER_CASES = [
    # (text, as_expression): what the token reader must answer itself, exactly like the parser
    ('layer 3: {{ nodes["n-2-3"] | tojson }} / {{ inputs.seed + 3 }}', False),
    ("nodes['n-1-3'].value > 3 and not fetch.done", True),
    ("{{ nodes['x'].value < 0 }}", True),
    ("{{ a | map(attribute='x') | join(', ') }}", False),
    ("{{ x if y else z }} and {{ a if b }}", False),
    ("{{ a.b(c=d, e=f) }}", False),
    ("{{ [a, {'k': b}, (c, d), ()] }}", False),
    ("{{ a is defined and b is not none }}", False),
    ("{{ 'x' 'y' ~ a ~ -b ** 2 // 3 % 4 }}", False),
    ("loop.index < 3 or parallel.item in inputs.list", True),
    ("{{ x not in [1, 2.5] }}", False),
    ("{{ items | selectattr('ok') | list | length }}", False),
    ("{{- greeting -}}\n{{ self }} {{ range(3) | list }}", False),
    ("{{ x is divisibleby(3) }}", False),
    ("{{ nodes.fetch.body }}", False),
]


@pytest.mark.parametrize(("text", "as_expression"), TOKEN_READER_CASES)
def test_token_reader_answers_the_usual_strings_like_the_parser(text, as_expression):
    fast = analysis.analyse_tokens(text, as_expression)
    assert fast is not None, "the token reader should understand this string"
    assert fast == analysis.analyse_parsed(text, as_expression)


@pytest.mark.parametrize(
    ("text", "as_expression"),
    [
        ("{{ a | shout }}", False),  # unknown filter: the parser reports it
        ("{{ a is shouting }}", False),  # unknown test
        ("{{ a[1:2] }}", False),  # slice
        ("{{ a, b }}", False),  # tuple
        ("{{ 'it\\'s' }}", False),  # escape in a string
        ("{{ a.b.c | upper.x }}", False),  # dotted filter name
        ("{% if a %}{{ b }}{% endif %}", False),
        ("{{ {'a': {'b': 1}} }}", False),  # "}}" inside brackets
        ("{{ x is sameas none }}", False),  # test argument without parentheses
        ("{{ nodes[('k')] }}", False),  # a constant key the reader cannot see
        ("{{ (nodes)['k'] }}", False),
        ("a }} b", True),
        ("{{ a + }}", False),  # syntax error
        ("{{ f(x=1, y) }}", False),
        ("{{ 1e5 }}", False),
        ("{{ é }}", False),
    ],
)
def test_token_reader_leaves_the_rest_to_the_parser(text, as_expression):
    assert analysis.analyse_tokens(text, as_expression) is None
    assert analysis.analyse(text, as_expression) == analysis.analyse_parsed(text, as_expression)


_FUZZ_WORDS = [
    "a",
    "b",
    "nodes",
    "inputs",
    "x_1",
    "range",
    "self",
    "true",
    "None",
    "and",
    "or",
    "not",
    "in",
    "is",
    "if",
    "else",
    "defined",
    "none",
    "upper",
    "tojson",
    "shout",
    "map",
    "attribute",
    "filter",
    "test",
    "1",
    "0",
    "2.5",
    "007",
    "1e3",
    "'k'",
    '"my-node"',
    "'a\\'b'",
    '""',
    "'}}'",
    '"{{"',
    "'open",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "~",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ".",
    ",",
    "|",
    ":",
    ";",
    "}}",
    "{{",
    "{%",
    "-}}",
    "é",
    "#",
    "!",
    "\n",
    "\t",
    "1.x",
    "x.0",
    "3.",
    ".5",
    "(nodes)",
    "nodes[('k')]",
    "nodes['a' 'b']",
]
_FUZZ_SEEDS = [
    "a.b",
    "nodes['k'].v",
    "nodes.k",
    "a | upper",
    "a is defined",
    "a is not none",
    "a if b else c",
    "not a and b",
    "a not in b",
    "[a, b,]",
    "{'k': a}",
    "(a, b)",
    "f(a, x=b)",
    "a | map(attribute='x') | list",
    "-a ** 2",
    "a ~ 'x'",
    'nodes["my-node"] | tojson',
    "a[b]",
    "a.b(c)(d)",
    "x is divisibleby(3)",
    "'a' 'b'",
    "a if b",
    "()",
    "nodes[0]",
]


def test_token_reader_agrees_with_the_parser_on_random_strings():
    """Differential check: whenever the fast path answers, it answers what the parser does."""
    import random

    rng = random.Random(20240607)
    answered = 0
    for _ in range(3000):
        if rng.random() < 0.4:
            words = rng.choices(_FUZZ_WORDS, k=rng.randint(1, 8))
        else:
            words = rng.choice(_FUZZ_SEEDS).replace("(", " ( ").replace(")", " ) ").split()
            for _ in range(rng.randint(0, 3)):
                position = rng.randint(0, len(words))
                if rng.random() < 0.5 and words:
                    words[min(position, len(words) - 1)] = rng.choice(_FUZZ_WORDS)
                else:
                    words.insert(position, rng.choice(_FUZZ_WORDS))
        expr = rng.choice([" ", ""]).join(words)
        for text, as_expression in [
            (expr, True),
            ("{{ " + expr + " }}", False),
            ("x {{ " + expr + " }} y", False),
            ("{{" + expr + "-}} {{ a }}", False),
        ]:
            fast = analysis.analyse_tokens(text, as_expression)
            if fast is not None:
                answered += 1
                assert fast == analysis.analyse_parsed(text, as_expression), (text, as_expression)
    assert answered > 1000  # the check itself exercised the reader


@pytest.mark.parametrize(
    "text",
    [
        "{% if a %}{{ b }}{% elif c %}{{ d | upper }}{% else %}{{ range(3) }}{% endif %}",
        "{{ x if y else z }}",
        "{{ a.b(c=d) }}",
        "{{ [a, {'k': b}] }}",
        "{{ a[b:c] }}",
        "{{ a is defined }}",
        "{{ self }} {{ namespace }}",
    ],
)
def test_tree_walk_agrees_with_jinja_meta(text):
    tree = templates.get_environment().parse(text)
    assert analysis.names_and_keys(tree)[0] == analysis._undeclared_by_jinja(templates.get_environment().parse(text))


@pytest.mark.parametrize(
    "shape",
    [
        "{{ nodes[@] }}",
        "{{ nodes[@].x | default(@) }}",
        "{{ @ ~ nodes[@] ~ nodes.k }} and {{ nodes[@] }}",
        "{{ nodes[@][@] }}",
        "{{ x | replace(@, @) }} {{ nodes[@] if a else nodes[@] }}",
        "{{ [@, nodes[@]] }}",
    ],
)
def test_expressions_of_one_shape_read_their_own_keys(shape):
    """The fast path reads an expression once per shape (string literals blanked); each
    string of that shape must still get its own nodes[...] keys, exactly like the parser."""
    variants = ['"a"', "'b-1'", '""', "'x y'", '"it\'s"', "'a\"b'", '"é | ( ] ."', '"{x}"', "'}}'", '"a\\"']
    token_reader._shape_entry.cache_clear()
    for round_ in range(3):
        for offset in range(len(variants)):
            text = shape
            for n in range(shape.count("@")):
                text = text.replace("@", variants[(offset + n * (round_ + 1)) % len(variants)], 1)
            fast = analysis.analyse_tokens(text, False)
            assert fast is None or fast == analysis.analyse_parsed(text, False), text
    assert token_reader._shape_entry.cache_info().hits > 0


def test_a_string_repeated_in_many_fields_is_reported_for_each_field():
    """Analysed once per string (cached), reported once per place it appears."""
    value = [{"u": "{{ fetch.x }}"}] * 100
    found = find_references(value)
    assert [refs.field for refs in found] == [f"data[{i}].u" for i in range(100)]
    assert {(refs.names, refs.node_keys, refs.error) for refs in found} == {(frozenset({"fetch"}), frozenset(), None)}


def test_errors_survive_pickling():
    import pickle

    render_failure = pickle.loads(pickle.dumps(TemplateRenderError("'x' is not defined", "data.url")))
    assert (render_failure.message, render_failure.field) == ("'x' is not defined", "data.url")
    assert str(render_failure) == "data.url: 'x' is not defined"
    syntax = pickle.loads(pickle.dumps(TemplateError("template syntax error: unexpected '}'", "data.a", 2)))
    assert (syntax.message, syntax.field, syntax.lineno) == ("template syntax error: unexpected '}'", "data.a", 2)


def test_env_namespace_internals_stay_behind_the_sandbox():
    assert "refused by the template sandbox" in render_error("{{ env.__class__ }}")
    # Names starting with one "_" are ordinary (unlisted) variable names, never internals.
    assert render_error("{{ env._values }}") == "data: env._values is not in FLOWMAESTRO_ENV_ALLOWLIST"


# --- a pure function of the run (issue 21 bug 1) ------------------------------------------------
# A node's resolved configuration is its key: a value that differs on another execution of the
# same run makes the node run again after a crash or retry.


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("{{ lipsum() }}", "lipsum"),
        ("{{ [1, 2] | random }}", "random filter"),
        ("Hello {{ inputs.name }} {{ lipsum(1) }}", "lipsum"),
        ("{% for x in [1] %}{{ [x, 2] | random }}{% endfor %}", "random filter"),
        # True for a value read in this execution, False once restored from the journal.
        ("{{ inputs.name is sameas inputs.name }}", "sameas test"),
        ("{% if inputs.name is not sameas none %}x{% endif %}", "sameas test"),
    ],
)
def test_a_non_deterministic_name_is_a_compile_issue_naming_node_field_and_name(template, name):
    from builder.compiler import compile_canvas
    from tests.support import canvas, make_registry, node

    raw = canvas([node("greet", data={"output": {"text": template}})], inputs={"name": {"type": "string"}})
    [issue] = compile_canvas(raw, make_registry()).errors
    assert (issue.code, issue.node_id, issue.field) == ("nondeterministic_template", "greet", "data.output.text")
    assert name in issue.message


ADDRESS_BEARING = [
    "{{ 'a'.upper }}",
    "x {{ 'a'.upper }}",
    "x {{ inputs.tags.count }}",
    "{{ inputs.get }}",
    "x {{ range }}",
    "x {{ cycler(1, 2) }}",
    "{{ cycler(1, 2) }}",
    "x {{ joiner() }}",
    "{{ [inputs.get] }}",
    "x {{ [inputs.get] }}",
    "{{ 'x' ~ inputs.name.upper }}",
    "{{ inputs.name.upper | string }}",
    "{{ inputs.name.upper | e }}",
    "{{ '%s' % inputs.name.upper }}",
    "{{ '{}'.format(inputs.name.upper) }}",
    "{{ [inputs.name.upper] | join }}",
    "{{ '%s' | format(inputs.name.upper) }}",
    "{{ inputs.name | attr('upper') | pprint }}",
]


@pytest.mark.parametrize("template", ADDRESS_BEARING)
def test_an_object_whose_text_holds_its_memory_address_is_refused(template):
    message = render_error({"o": template})
    assert "memory address" in message and "run again after a crash or retry" in message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("x {{ inputs.tags | map('upper') }}", 'x ["A", "B"]'),
        ("x {{ inputs.tags | reverse }}", 'x ["b", "a"]'),
        ("x {{ inputs.tags | select }}", 'x ["a", "b"]'),
        ("x {{ inputs.tags | batch(1) }}", 'x [["a"], ["b"]]'),
    ],
)
def test_a_generator_written_into_text_gives_its_items_as_json(template, expected):
    assert render_value(template, make_scope()) == expected
    assert render_value(template, make_scope()) == render_value(template, make_scope())


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 'x' ~ inputs.where }}", "x['meet at 0x10 street']"),
        ("x {{ inputs.where }}", 'x ["meet at 0x10 street"]'),
        ("{{ '%s' % inputs.where[0] }}", "meet at 0x10 street"),
        ("{{ inputs.where | join }}", "meet at 0x10 street"),
        ("{% for i in [1] %}{{ loop }}{% endfor %}", "<LoopContext 1/1>"),
        ("x {{ namespace(a=1) }}", "x <Namespace {'a': 1}>"),
        ("{{ 'a'.upper() ~ inputs.count }}", "A3"),
    ],
)
def test_data_that_looks_like_an_address_and_deterministic_objects_still_render(template, expected):
    assert render_value(template, make_scope(inputs={"where": ["meet at 0x10 street"], "count": 3})) == expected
