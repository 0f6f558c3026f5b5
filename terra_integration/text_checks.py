"""Whether text can be stored: the checks every input path needs before a value reaches the database.

No imports from the app, so blueprints, services and `terra_integration/` can all use them.
"""

from __future__ import annotations

from typing import Any


def storable_text(value: str) -> bool:
    """Whether the database can store and compare `value`. PostgreSQL refuses NUL characters, and
    no database can encode a lone UTF-16 surrogate; JSON carries both as `\\u` escapes and a query
    string carries NUL as `%00`."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_json(value: Any) -> bool:
    """`storable_text` for every key and string in parsed JSON (iterative: nesting cannot overflow)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not storable_text(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True
