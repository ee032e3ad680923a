"""User JSON with bounded nesting."""

from __future__ import annotations

import pytest

from workers.engine.io.json_input import MAX_JSON_DEPTH, load_json


def test_ordinary_documents_load() -> None:
    assert load_json('{"type": "mlp", "hidden": [64, 32]}') == {"type": "mlp", "hidden": [64, 32]}
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 500, 100_000])
def test_deep_nesting_is_a_value_error(levels: int) -> None:
    with pytest.raises(ValueError, match="nested more than"):
        load_json('{"a": ' * levels + "1" + "}" * levels)


def test_invalid_json_is_still_a_decode_error() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        load_json("{")
