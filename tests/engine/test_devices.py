"""The head job on each device: the CPU always, CUDA where this machine has it (skipped, with
the reason in pytest's summary, where it does not; CI has no GPU).

On every device the training features are held once, in the checkpoint's float32, and the
host never holds an n × d float64 copy of them: the peak RSS the job adds on top of its
loaded inputs stays under half of such a copy. What it does add is a few n-vectors (influences,
weights), against 4 KiB a row for a float64 copy at d = 512, plus ≈ 200 MB that do not grow
with n (two 8192-row float64 blocks, the audit and eval designs, the bootstrap's blocks). On
CUDA the report must agree with the CPU's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from workers.engine.config import spec_from_dict
from workers.engine.io.architecture import parse_arch
from workers.engine.io.datasets import DatasetSchema
from workers.engine.io.inputs import CorrectionInputs, load_inputs
from workers.engine.pipeline import run_correction

ROWS, WIDTH, HOLDOUT = 200_000, 512, 5_000
FLOAT64_COPY = ROWS * WIDTH * 8
NO_CUDA = "no CUDA device on this machine: the GPU code path runs where one is present"
ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]
SCHEMA = DatasetSchema(label="y", sensitive=("group",))


def _split(rng: np.random.Generator, n: int, beta: np.ndarray) -> dict[str, np.ndarray]:
    group = (rng.random(n) < 0.35).astype(np.uint8)
    x = rng.standard_normal((n, WIDTH), dtype=np.float32)
    x[:, 0] += group.astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ beta - 0.3)))).astype(np.uint8)
    return {"x": x, "y": y, "group": group}


def _fit(split: dict[str, np.ndarray], rows: int = 20_000, steps: int = 5) -> np.ndarray:
    """The user's head: logistic regression by Newton on the first ``rows`` rows (λ = 1, as the
    engine's default objective; the engine's polish finishes it)."""
    phi = np.column_stack([split["x"][:rows].astype(np.float64), np.ones(rows)])
    y = split["y"][:rows].astype(np.float64)
    theta = np.zeros(WIDTH + 1)
    ridge = np.diag(np.r_[np.ones(WIDTH), 0.0])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-phi @ theta))
        gradient = phi.T @ (p - y) + ridge @ theta
        theta -= np.linalg.solve(phi.T @ (phi * (p * (1 - p))[:, None]) + ridge, gradient)
    return theta


@pytest.fixture(scope="module")
def head_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("head-job")
    rng = np.random.default_rng(0)
    beta = np.zeros(WIDTH, dtype=np.float32)
    beta[:4] = (1.0, 0.8, -0.6, 0.4)
    paths = {}
    metadata = {"softunlearn.dataset": json.dumps({"groups": {"group": ["g0", "g1"]}})}
    for role, n in (("train", ROWS), ("audit", HOLDOUT), ("eval", HOLDOUT)):
        split = _split(rng, n, beta)
        if role == "train":
            theta = _fit(split)
        paths[role] = root / f"{role}.safetensors"
        save_file(split, str(paths[role]), metadata=metadata)
    paths["model"] = root / "head.safetensors"
    save_file({"weight": theta[:-1].reshape(1, -1).astype(np.float32), "bias": theta[-1:].astype(np.float32)},
              str(paths["model"]))
    return paths


def _inputs(paths: dict[str, Path]) -> CorrectionInputs:
    arch = parse_arch({"type": "linear_head", "in_features": WIDTH})
    return load_inputs(paths["model"], arch, (paths["train"], SCHEMA), (paths["audit"], SCHEMA),
                       (paths["eval"], SCHEMA), "group")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError as exc:
        pytest.skip(f"cannot reset this process's peak RSS ({exc.strerror}): the host-copy check needs it")


def _run(paths: dict[str, Path], device: str) -> tuple[dict[str, Any], int, CorrectionInputs]:
    inputs = _inputs(paths)
    assert inputs.train.features.dtype == np.float32
    no_frontier: dict[str, list[float]] = {"reductions": [], "k_fractions": []}
    spec = spec_from_dict({"objective": {"metric": "demographic_parity"}, "method": {"max_iterations": 1},
                           "evaluation": {"robustness": False, "frontier": no_frontier}})
    _reset_peak_rss()
    floor = _rss_kib("VmRSS")
    result = run_correction(inputs, spec, device=device)
    added = (_rss_kib("VmHWM") - floor) * 1024
    return result.report, added, inputs


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_the_head_job_holds_no_float64_copy_of_the_training_features(head_job: dict[str, Path],
                                                                    device: str) -> None:
    report, added, _ = _run(head_job, device)
    assert report["device"].startswith(device)
    assert report["weights"]["n"] == ROWS
    assert added < FLOAT64_COPY / 2, f"the job added {added / 2**20:.0f} MiB at its peak"


@pytest.mark.slow
@ON_CUDA
def test_cuda_reports_what_the_cpu_reports(head_job: dict[str, Path]) -> None:
    on_cpu, _, _ = _run(head_job, "cpu")
    on_cuda, _, _ = _run(head_job, "cuda")
    for split in ("audit", "eval"):
        for key in ("accuracy", "log_loss", "demographic_parity_difference"):
            assert on_cuda["after"][split][key] == pytest.approx(on_cpu["after"][split][key], abs=1e-6), key
    assert on_cuda["target"]["audit_after"] == pytest.approx(on_cpu["target"]["audit_after"], abs=1e-6)
