"""Running the engine on the shipped examples: inputs, specs, corrections and their weights."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.engine.config import CorrectionSpec, spec_from_dict
from workers.engine.examples.builder import ExampleName, build_example
from workers.engine.examples.common import ExampleInfo
from workers.engine.examples.tabular import SETTINGS, TrainSettings
from workers.engine.io.architecture import load_arch
from workers.engine.io.datasets import Dataset, load_schema
from workers.engine.pipeline import CorrectionInputs, CorrectionResult, load_inputs, run_correction

__all__ = [
    "DEVICE",
    "Example",
    "base_spec",
    "correction_seconds",
    "merge",
    "prepare_example",
    "run_engine",
]

DEVICE = "cpu"
"""Every engine run is on the CPU, so the timings describe the 2-core machine."""
CORRECTION_STAGES = ("load", "polish", "influence", "weights", "unlearn")


@dataclass(frozen=True)
class Example:
    """A built example, loaded: its inputs, sensitive column and baseline training settings."""

    name: str
    info: ExampleInfo
    inputs: CorrectionInputs
    sensitive: str
    settings: TrainSettings
    build_seconds: float

    @property
    def eval(self) -> Dataset:
        """The held-out eval split (every example has one)."""
        if self.inputs.eval is None:
            raise ValueError(f"{self.name}: the example has no eval split")
        return self.inputs.eval


def prepare_example(name: ExampleName, root: Path, seed: int) -> Example:
    """Build example ``name`` under ``root`` (baseline trained with ``seed``) and load it."""
    started = time.perf_counter()
    info = build_example(name, root / name, seed=seed, overwrite=True)
    seconds = time.perf_counter() - started
    paths = info.paths
    schema = load_schema(paths["schema.json"])
    sensitive = info.sensitive[0]
    inputs = load_inputs(paths["model.safetensors"], load_arch(paths["arch.json"]),
                         (paths["train.parquet"], schema), (paths["audit.parquet"], schema),
                         (paths["eval.parquet"], schema), sensitive)
    return Example(name, info, inputs, sensitive, SETTINGS[name], seconds)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively for nested objects (inputs untouched)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_spec(sensitive: str, robust_eval: bool, seed: int) -> dict[str, Any]:
    """The benchmark's job spec before a variant's overrides: DP on ``sensitive``, defaults else."""
    return {
        "objective": {"metric": "demographic_parity", "sensitive_attribute": sensitive},
        "evaluation": {"robustness": robust_eval},
        "seed": seed,
    }


def _spec(example: Example, overrides: Mapping[str, Any], robust_eval: bool, seed: int,
          ) -> CorrectionSpec:
    return spec_from_dict(merge(base_spec(example.sensitive, robust_eval, seed), overrides))


def run_engine(example: Example, overrides: Mapping[str, Any], *, robust_eval: bool = False,
               seed: int = 0) -> tuple[CorrectionResult, np.ndarray]:
    """One correction through the public pipeline, on the CPU, and its final weights 1 + ε."""
    spec = _spec(example, overrides, robust_eval, seed)
    result = run_correction(example.inputs, spec, device=DEVICE)
    return result, result.weights


def correction_seconds(timings: Mapping[str, float], *, with_load: bool = True) -> float:
    """Seconds spent correcting (load → unlearn), leaving out evaluation and the report.

    ``with_load=False`` also leaves out ``load`` (polish → unlearn): with robust evaluation on,
    ``load`` includes crafting the frozen evaluation attacks, which is not part of the method.
    """
    stages = CORRECTION_STAGES if with_load else CORRECTION_STAGES[1:]
    return float(sum(timings.get(stage, 0.0) for stage in stages))
