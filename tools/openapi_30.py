"""docs/openapi-3.0.json: the mobile API's OpenAPI 3.1 document (docs/openapi.json) rewritten as
OpenAPI 3.0.3, for client generators that handle 3.0 better than 3.1 (openapi-generator 6.x turns
3.1-only constructs into `Any`).

The 3.1 document is the one source: `python -m tools.openapi_30` writes the copy, and
tests/test_openapi.py fails when the committed copy is not what this makes of today's document.

What changes, in every schema:
- `type: [T, "null"]` becomes `type: T, nullable: true`; `anyOf: [X, {type: null}]` becomes X made
  nullable (a `$ref` goes into `allOf`, since 3.0 ignores a `$ref`'s siblings);
- `const: v` becomes `enum: [v]`, and `examples: [v, ...]` becomes `example: v`;
- `if`/`then`/`else` is dropped: 3.0 has no conditionals, and they only restate what `terminal`
  and `poll_after_ms` already say in their descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
SOURCE = DOCS / "openapi.json"
TARGET = DOCS / "openapi-3.0.json"
NOTE = (
    "\n**This copy** is OpenAPI 3.0.3, generated from the OpenAPI 3.1 document `openapi.json` (served at "
    "`GET /api/v1/openapi.json`) by `python -m tools.openapi_30`; the two describe the same API. "
    "The 3.1 document is stricter in one place: it ties `terminal` and `poll_after_ms` to `status`.\n"
)
DROPPED = ("if", "then", "else")
NESTED_LISTS = ("anyOf", "oneOf", "allOf")


def convert(document: dict) -> dict:
    converted = _walk(document)
    converted["openapi"] = "3.0.3"
    converted["info"] = {**converted["info"], "description": converted["info"]["description"] + NOTE}
    return converted


def _walk(node: Any) -> Any:
    """Convert every schema below `node`: the values of `schema` keys and of components.schemas."""
    if isinstance(node, list):
        return [_walk(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {}
    for key, value in node.items():
        if key == "schema":
            converted[key] = schema_30(value)
        elif key == "schemas" and isinstance(value, dict):
            converted[key] = {name: schema_30(schema) for name, schema in value.items()}
        else:
            converted[key] = _walk(value)
    return converted


def schema_30(schema: dict) -> dict:
    """One JSON Schema 2020-12 schema (as OpenAPI 3.1 uses it) as an OpenAPI 3.0 schema object."""
    result: dict = {}
    nullable = False
    for key, value in schema.items():
        if key in DROPPED:
            continue
        if key == "type" and isinstance(value, list):
            types = [kind for kind in value if kind != "null"]
            nullable = nullable or len(types) < len(value)
            assert len(types) == 1, f"3.0 has no union type: {value}"
            result["type"] = types[0]
        elif key == "enum" and None in value:
            nullable = True
            result["enum"] = [item for item in value if item is not None]
        elif key == "const":
            result["enum"] = [value]
        elif key == "examples":
            result["example"] = value[0]
        elif key in NESTED_LISTS:
            options = [option for option in value if option != {"type": "null"}]
            nullable = nullable or len(options) < len(value)
            if len(options) == 1 and key == "anyOf":
                single = schema_30(options[0])
                result.update({"allOf": [single]} if "$ref" in single else single)
            else:
                result[key] = [schema_30(option) for option in options]
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            result[key] = schema_30(value)
        elif key == "properties":
            result[key] = {name: schema_30(property_schema) for name, property_schema in value.items()}
        else:
            result[key] = value
    if nullable:
        result["nullable"] = True
    return result


def render(document: dict) -> str:
    """The file's text: as docs/openapi.json is written (two-space indent, UTF-8, final newline)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    TARGET.write_text(render(convert(json.loads(SOURCE.read_text(encoding="utf-8")))), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
