"""The published JSON Schema of a canvas, with each node type's ``data`` schema.

A frontend can validate a canvas's shape before sending it. Graph rules (cycles,
handles, references) need the compiler: ``POST /api/workflows/validate`` or
``flowmaestro validate``.
"""

from __future__ import annotations

from typing import Any

from builder.canvas import CanvasDocument
from builder.catalog import NodeCatalog, NodeTypeSpec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema(spec: NodeTypeSpec) -> dict[str, Any]:
    """The JSON Schema of a node's ``data``, made from the very model the compiler validates
    ``data`` with (its ``$defs`` inside: the schema stands alone). The canvas schema and the
    node catalog (``GET /api/node-types``) both publish this one."""
    return spec.config_model.model_json_schema(ref_template="#/$defs/{model}")


def canvas_json_schema(catalog: NodeCatalog) -> dict[str, Any]:
    schema = CanvasDocument.model_json_schema()
    defs = schema.setdefault("$defs", {})
    node_base = defs["NodeModel"]
    variants = []
    for node_type in catalog.types():
        spec = catalog.spec(node_type)
        assert spec is not None
        config_schema = config_json_schema(spec)
        for name, definition in config_schema.pop("$defs", {}).items():
            defs.setdefault(name, definition)
        config_name = f"{spec.config_model.__name__}_{node_type}"
        defs[config_name] = config_schema
        variants.append(
            {
                "if": {"properties": {"type": {"const": node_type}}, "required": ["type"]},
                "then": {"properties": {"data": {"$ref": f"#/$defs/{config_name}"}}},
            }
        )
    node_base["properties"]["type"] = {
        "type": "string",
        "enum": sorted(catalog.types()),
        "description": "A registered node type.",
    }
    node_base["allOf"] = variants
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = "FlowMaestro canvas v1"
    return schema
