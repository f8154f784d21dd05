"""JSON-schema modes as the real model APIs treat them, for the local protocol servers
(tests/openai_server.py, tests/agent_server.py, tests/anthropic_server.py).

- OpenAI's ``response_format: {type: json_schema, json_schema: {name, schema, strict}}``:
  the request is refused (400, OpenAI's wording) when the name or schema is malformed,
  the root is not an object, or ``strict`` is asked of a schema strict mode does not take
  (an object not closed with ``additionalProperties: false``, or a property not required).
  With ``strict``, the answer always fits (constrained decoding): a scripted text that
  does not fit is replaced by an instance of the schema. Without it, the script is sent.
- Anthropic's tools and ``tool_choice`` (``auto``, ``any``, ``tool`` with a name): a tool
  needs an ``input_schema`` whose type is object, a forced tool must exist, and every
  ``tool_use`` of an assistant message must be answered by a ``tool_result`` in the next
  user message (400, Anthropic's wording, otherwise).

Written apart from the product's code on purpose: the servers check what the APIs check,
not what FlowMaestro believes they do.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema.validators import validator_for

OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ANTHROPIC_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def openai_format_problem(body: dict[str, Any]) -> str | None:
    """Why OpenAI would refuse the request's response_format, or None."""
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return None
    if kind != "json_schema":
        return f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'."
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return "Missing required parameter: 'response_format.json_schema'."
    name = spec.get("name")
    if not isinstance(name, str) or not OPENAI_NAME.match(name):
        return f"Invalid 'response_format.json_schema.name': string does not match pattern. Got {name!r}."
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return "Invalid type for 'response_format.json_schema.schema': expected an object."
    if "strict" in spec and not isinstance(spec["strict"], bool):
        return "Invalid type for 'response_format.json_schema.strict': expected a boolean."
    if schema.get("type") != "object":
        return (
            f"Invalid schema for response_format '{name}': schema must be a JSON Schema of 'type: \"object\"', "
            f"got 'type: \"{schema.get('type')}\"'."
        )
    if spec.get("strict"):
        problem = strict_problem(schema, ())
        if problem is not None:
            return f"Invalid schema for response_format '{name}': {problem}"
    return None


def strict_problem(schema: Any, context: tuple[str, ...]) -> str | None:
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            found = strict_problem(item, (*context, str(index)))
            if found:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for key, value in schema.items():
        if key in ("enum", "const", "default"):
            continue
        found = strict_problem(value, (*context, key))
        if found:
            return found
    return None


def strict_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema the answer must fit when the request asks for strict mode."""
    spec = (body.get("response_format") or {}).get("json_schema") or {}
    return spec.get("schema") if spec.get("strict") else None


def fits(schema: dict[str, Any], value: Any) -> bool:
    return validator_for(schema)(schema).is_valid(value)


def conforming_text(schema: dict[str, Any] | None, scripted: str) -> str:
    """What a model under constrained decoding writes: the scripted text when it fits."""
    if schema is None:
        return scripted
    try:
        if fits(schema, json.loads(scripted)):
            return scripted
    except ValueError:
        pass
    return json.dumps(instance_of(schema, schema))


def instance_of(schema: Any, root: dict[str, Any]) -> Any:
    """A small value valid against ``schema`` (the subset strict mode allows)."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target[part]
        return instance_of(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance_of(schema[key][0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {k: instance_of(v, root) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance_of(schema.get("items"), root) for _ in range(schema.get("minItems", 0))]
    simple: dict[Any, Any] = {"string": "x" * schema.get("minLength", 0), "integer": 0, "number": 0, "boolean": False}
    return simple.get(kind)


def anthropic_request_problem(body: dict[str, Any]) -> str | None:
    """Why the Messages API would refuse the request's tools, tool_choice or conversation."""
    tools = body.get("tools") or []
    names = []
    for index, tool in enumerate(tools):
        name = tool.get("name")
        if not isinstance(name, str) or not ANTHROPIC_NAME.match(name):
            return f"tools.{index}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{index}.custom.input_schema.type: Input should be 'object'"
        names.append(name)
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            return f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'; got {kind!r}"
        if kind in ("any", "tool") and not tools:
            return "tool_choice: tool_choice may only be specified while providing tools."
        if kind == "tool" and choice.get("name") not in names:
            return f"tool_choice.name: Tool '{choice.get('name')}' not found in tools"
    messages = body.get("messages") or []
    for index, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        asked = [b["id"] for b in content if b.get("type") == "tool_use"]
        if not asked:
            continue
        following = messages[index + 1] if index + 1 < len(messages) else None
        answered = set()
        if following is not None and isinstance(following.get("content"), list):
            answered = {b.get("tool_use_id") for b in following["content"] if b.get("type") == "tool_result"}
        missing = [i for i in asked if i not in answered]
        if missing and following is not None:
            return (
                f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` "
                "block in the next message."
            )
    return None
