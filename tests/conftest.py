"""Shared fixtures: real examples built once per test session from the vendored UCI data."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.engine.examples import ExampleInfo, build_example


@pytest.fixture(scope="session")
def adult_example(tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """The Adult example (seed 0), as ``softunlearn example adult`` writes it."""
    return build_example("adult", tmp_path_factory.mktemp("examples") / "adult", seed=0)


@pytest.fixture(scope="session")
def bank_example(tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """The Bank example (seed 0)."""
    return build_example("bank", tmp_path_factory.mktemp("examples") / "bank", seed=0)


def example_args(example: ExampleInfo, out: Path, *extra: str) -> list[str]:
    """``softunlearn correct`` arguments for an example directory."""
    d = example.out_dir
    return ["correct", "--model", str(d / "model.safetensors"), "--arch", str(d / "arch.json"),
            "--train", str(d / "train.parquet"), "--audit", str(d / "audit.parquet"),
            "--eval", str(d / "eval.parquet"), "--label", example.label,
            "--sensitive", example.sensitive[0], "--out", str(out), "--quiet", *extra]
