"""The report the page tests render: the real CLI pipeline run once per session on the real
Adult example."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import example_args, run_correct
from workers.engine.examples.common import ExampleInfo


@pytest.fixture(scope="session")
def adult_report(adult_example: ExampleInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of ``softunlearn correct --objective demographic_parity`` on the Adult example."""
    out = tmp_path_factory.mktemp("report-page")
    return run_correct(example_args(adult_example, out, "--objective", "demographic_parity"), out)
