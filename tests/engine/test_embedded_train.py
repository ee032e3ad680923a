"""Training rows read through the model's extractor (a head-scope job with a head method): only
φ(x) is held, it is bit for bit the φ the engine would compute from the inputs, and the job
reports and returns exactly what it does from the inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from workers.engine.config import spec_from_dict
from workers.engine.io.architecture import parse_arch
from workers.engine.io.datasets import DatasetSchema, load_dataset
from workers.engine.io.inputs import CorrectionInputs, load_inputs
from workers.engine.models.head_model import HeadModel
from workers.engine.pipeline import run_correction, train_embedding

ROWS, INPUTS, HIDDEN, HOLDOUT = 12_000, 24, 16, 3_000
SCHEMA = DatasetSchema(label="y", sensitive=("group",))
ARCH = {"type": "mlp", "in_features": INPUTS, "hidden": [HIDDEN], "activation": "relu"}
NO_FRONTIER: dict[str, list[float]] = {"reductions": [], "k_fractions": []}


def _split(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    group = (rng.random(n) < 0.4).astype(np.uint8)
    x = rng.standard_normal((n, INPUTS), dtype=np.float32)
    x[:, :2] += group[:, None].astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 1] - x[:, 2])))).astype(np.uint8)
    return {"x": x, "y": y, "group": group}


def _model() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"0.weight": torch.randn(HIDDEN, INPUTS, generator=generator) * 0.3,
            "0.bias": torch.randn(HIDDEN, generator=generator) * 0.1,
            "2.weight": torch.randn(1, HIDDEN, generator=generator) * 0.5,
            "2.bias": torch.zeros(1)}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The splits as tensor datasets, the training split also as Parquet and CSV; the checkpoint."""
    root = tmp_path_factory.mktemp("embedded")
    rng = np.random.default_rng(0)
    metadata = {"softunlearn.dataset": json.dumps({"groups": {"group": ["g0", "g1"]}})}
    paths: dict[str, Path] = {}
    for role, n in (("train", ROWS), ("audit", HOLDOUT), ("eval", HOLDOUT)):
        split = _split(rng, n)
        paths[role] = root / f"{role}.safetensors"
        save_numpy(split, str(paths[role]), metadata=metadata)
        if role == "train":
            frame = pd.DataFrame(split["x"], columns=[f"f{j}" for j in range(INPUTS)])
            frame["y"], frame["group"] = split["y"], np.where(split["group"] == 1, "g1", "g0")
            frame.to_parquet(paths.setdefault("train_parquet", root / "train.parquet"))
            frame.to_csv(paths.setdefault("train_csv", root / "train.csv"), index=False)
    paths["model"] = root / "model.safetensors"
    save_file(_model(), str(paths["model"]))
    return paths


def _head_model() -> HeadModel:
    return HeadModel.from_state(parse_arch(ARCH), _model(), torch.device("cpu"))


@pytest.mark.parametrize("source", ["train", "train_parquet", "train_csv"])
def test_rows_read_through_the_extractor_are_the_engines_phi(files: dict[str, Path], source: str) -> None:
    model = _head_model()
    raw = load_dataset(files[source], SCHEMA, "train", np.float32)
    embedded = load_dataset(files[source], SCHEMA, "train", np.float32, model.embedding())
    assert embedded.embedded and not raw.embedded
    assert embedded.features.shape == (ROWS, HIDDEN) and embedded.features.dtype == np.float32
    expected = model.head_design(raw.features).features.numpy()
    assert np.array_equal(embedded.features, expected)
    assert np.array_equal(embedded.labels, raw.labels) and embedded.feature_names == raw.feature_names


def _job(files: dict[str, Path], spec: dict[str, Any], embed: bool) -> tuple[dict[str, Any], CorrectionInputs,
                                                                          dict[str, torch.Tensor]]:
    resolved = spec_from_dict(spec)
    inputs = load_inputs(files["model"], parse_arch(ARCH), (files["train"], SCHEMA), (files["audit"], SCHEMA),
                         (files["eval"], SCHEMA), "group",
                         embed_train=train_embedding(resolved, "cpu") if embed else None)
    result = run_correction(inputs, resolved, device="cpu")
    return result.report, inputs, result.state


def test_a_head_job_on_embedded_rows_reports_what_it_reports_from_the_inputs(files: dict[str, Path]) -> None:
    frontier = {"reductions": [0.3, 0.6], "k_fractions": [0.05]}
    spec = {"objective": {"metric": "demographic_parity", "reduction": 0.5},
            "evaluation": {"robustness": False, "frontier": frontier}}
    embedded, inputs, state = _job(files, spec, embed=True)
    plain, plain_inputs, plain_state = _job(files, spec, embed=False)
    assert inputs.train.embedded and inputs.train.features.shape == (ROWS, HIDDEN)
    assert not plain_inputs.train.embedded and plain_inputs.train.features.shape == (ROWS, INPUTS)
    for key in ("before", "after", "predicted", "weights", "target", "frontier", "confidence", "warnings"):
        assert embedded[key] == plain[key], key
    assert all(torch.equal(state[k], plain_state[k]) for k in plain_state)


@pytest.mark.parametrize("spec", [{"influence": {"scope": "full"}},
                                  {"method": {"name": "finetune"}}])
def test_jobs_that_need_the_inputs_read_them(spec: dict[str, Any]) -> None:
    resolved = spec_from_dict({"objective": {"metric": "demographic_parity"}, **spec})
    assert train_embedding(resolved, "cpu") is None


def test_logistic_regression_reads_its_inputs() -> None:
    embedding = train_embedding(spec_from_dict({"objective": {"metric": "demographic_parity"}}), "cpu")
    assert embedding is not None
    head = {"weight": torch.zeros(1, INPUTS), "bias": torch.zeros(1)}
    assert embedding(parse_arch({"type": "linear_head", "in_features": INPUTS}), head) is None
    assert embedding(parse_arch(ARCH), _model()) is not None


def test_embedded_rows_cannot_feed_a_full_scope_job(files: dict[str, Path]) -> None:
    head_spec = spec_from_dict({"objective": {"metric": "demographic_parity"}})
    inputs = load_inputs(files["model"], parse_arch(ARCH), (files["train"], SCHEMA), (files["audit"], SCHEMA),
                         None, "group", embed_train=train_embedding(head_spec, "cpu"))
    full = spec_from_dict({"objective": {"metric": "demographic_parity"}, "influence": {"scope": "full"},
                           "evaluation": {"robustness": False, "frontier": NO_FRONTIER}})
    with pytest.raises(ValueError, match="needs the training inputs"):
        run_correction(inputs, full, device="cpu")
