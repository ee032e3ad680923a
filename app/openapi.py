"""Write the committed OpenAPI document: ``python -m app.openapi [PATH]``.

The document does not depend on settings (keys, store, Redis), so any environment produces the
same file; ``tests/app/test_contract.py`` fails when the committed file drifts from the app.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.main import create_app
from workers.settings import ServiceSettings

__all__ = ["DEFAULT_PATH", "render", "schema"]

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def schema() -> dict[str, Any]:
    """The app's OpenAPI document (built with throwaway settings)."""
    with tempfile.TemporaryDirectory() as store:
        document: dict[str, Any] = create_app(ServiceSettings(store=Path(store)), reconcile=False).openapi()
    return document


def render() -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")
