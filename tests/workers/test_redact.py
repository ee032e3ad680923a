"""Server paths and staging names never reach a client's error message."""

from __future__ import annotations

import pytest

from app.errors import ApiError, problem_document
from workers.redact import REDACTED_PATH, redact_paths


@pytest.mark.parametrize(("text", "expected"), [
    ("[Errno 2] No such file or directory: '/data/store/t/acme/datasets/x/data.parquet'",
     f"[Errno 2] No such file or directory: '{REDACTED_PATH}'"),
    ("at /usr/lib/python3.11/site-packages/torch/nn.py:12", f"at {REDACTED_PATH}:12"),
    ("cannot open /tmp/x", f"cannot open {REDACTED_PATH}"),
    ("stage-0123456789abcdef-0123456789abcdef0123456789abcdef is gone", f"{REDACTED_PATH} is gone"),
    (r"C:\Users\me\model.bin missing", f"{REDACTED_PATH} missing"),
])
def test_paths_are_redacted(text: str, expected: str) -> None:
    assert redact_paths(text) == expected


@pytest.mark.parametrize("text", [
    "DELETE /v1/models/{id} first", "ratio 1/2 of a/b/c", "see https://example.com/a/b/c",
    "column 'x' has 3 NaN values",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_paths(text) == text


def test_problem_documents_are_redacted() -> None:
    error = ApiError(422, "invalid_dataset", "file: cannot read /srv/store/.tmp/abc",
                     errors=[{"field": "file", "message": "in /srv/store/.tmp/abc"}])
    document = problem_document(error, "/v1/datasets")
    assert "/srv" not in str(document) and document["instance"] == "/v1/datasets"
