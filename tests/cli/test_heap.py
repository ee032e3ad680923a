"""The collector around the CLI's heavy imports: paused and frozen only in a process of its own,
and collecting cycles made afterwards as usual."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from tests.engine.small_data import write_small_example
from workers.cli import engine_commands
from workers.cli.heap import imports_outside_the_collector
from workers.cli.main import main


class _Node:
    partner: _Node | None = None


@pytest.fixture
def thawed() -> Iterator[None]:
    """Give the test process its heap back: unfreeze whatever a test froze."""
    yield
    gc.unfreeze()
    gc.enable()


def test_outside_its_own_process_the_collector_is_left_alone(thawed: None) -> None:
    frozen = gc.get_freeze_count()
    with imports_outside_the_collector(own_process=False):
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_in_its_own_process_imports_run_paused_and_stay_frozen(thawed: None) -> None:
    with imports_outside_the_collector(own_process=True):
        assert not gc.isenabled()
        imported = [object() for _ in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() >= len(imported)
    first, second = _Node(), _Node()
    first.partner, second.partner = second, first  # a cycle made after the freeze
    watch = weakref.ref(first)
    del first, second
    gc.collect()
    assert watch() is None


def test_only_a_command_without_arguments_is_its_own_process(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """main(argv) is how tests and embedding code call the CLI: their heap is not the command's;
    the console script and ``python -m`` call main() and get the frozen imports."""
    seen: list[bool] = []

    def record(own_process: bool) -> AbstractContextManager[None]:
        seen.append(own_process)
        return nullcontext()

    monkeypatch.setattr(engine_commands, "imports_outside_the_collector", record)
    example = write_small_example(tmp_path / "small")
    assert main(example.args(tmp_path / "out", "--objective", "demographic_parity")) in (0, 3)
    monkeypatch.setattr(sys, "argv", ["softunlearn", *example.args(tmp_path / "again",
                                                                   "--objective", "demographic_parity")])
    assert main() in (0, 3)
    assert seen == [False, True]
