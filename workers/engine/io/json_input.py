"""JSON from users, with its nesting bounded (torch-free; the HTTP front end uses it too).

``json.loads`` recurses once per nesting level and raises ``RecursionError`` a thousand levels
down; nothing this service reads is nested more than a few levels, so anything past
:data:`MAX_JSON_DEPTH` is refused as a plain ``ValueError`` (a 4xx / exit 2 for the caller).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "load_json"]

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted."""


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(text: str | bytes) -> Any:
    """``json.loads(text)``, refusing documents nested deeper than :data:`MAX_JSON_DEPTH`.

    Raises:
        ValueError: not valid JSON (``json.JSONDecodeError``), or nested too deeply.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value
