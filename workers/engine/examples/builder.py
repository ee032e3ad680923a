"""Build an example by name: the entry point of ``softunlearn example``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from workers.engine.errors import InputError
from workers.engine.examples.colored_mnist import IMAGE_EXAMPLE_FILES, build_colored_mnist_into
from workers.engine.examples.common import ExampleInfo, Progress, build_atomically
from workers.engine.examples.tabular import (
    EXAMPLE_FILES,
    HIDDEN,
    SETTINGS,
    TabularName,
    TrainSettings,
    build_tabular_into,
)

__all__ = ["EXAMPLE_FILES", "EXAMPLE_NAMES", "HIDDEN", "SETTINGS", "ExampleInfo", "ExampleName",
           "TrainSettings", "build_example", "example_files"]

ExampleName = Literal["adult", "bank", "colored-mnist"]
EXAMPLE_NAMES: tuple[str, ...] = get_args(ExampleName)


def example_files(name: str) -> tuple[str, ...]:
    """The files the example ``name`` writes."""
    return IMAGE_EXAMPLE_FILES if name == "colored-mnist" else EXAMPLE_FILES


def build_example(
    name: ExampleName,
    out_dir: Path,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> ExampleInfo:
    """Write the ready-to-correct example ``name`` into ``out_dir``.

    The files are built in a temporary directory beside ``out_dir`` and moved in only when all
    of them are written, so a failure leaves no half example. The same seed gives the same
    splits and a byte-identical ``model.safetensors`` (on the same machine and torch build).

    Raises:
        InputError: unknown example name, or ``out_dir`` is not empty and ``overwrite`` is false.
    """
    if name not in EXAMPLE_NAMES:
        raise InputError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLE_NAMES)}")
    say: Progress = progress or (lambda _message: None)
    if name == "colored-mnist":
        return build_atomically(name, Path(out_dir), IMAGE_EXAMPLE_FILES, overwrite, say,
                                lambda staging: build_colored_mnist_into(staging, seed, say))
    tabular: TabularName = "adult" if name == "adult" else "bank"
    return build_atomically(name, Path(out_dir), EXAMPLE_FILES, overwrite, say,
                            lambda staging: build_tabular_into(tabular, staging, seed, say))
