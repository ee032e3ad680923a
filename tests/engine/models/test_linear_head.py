"""The model-agnostic path: correct a linear head on exported embeddings, put it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine.small_data import write_small_example
from workers.cli.main import main
from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.io.architecture import parse_arch

FEATURES = [f"f{i}" for i in range(10)]


def _backbone_and_head(root: Path) -> torch.nn.Sequential:
    """The small example's MLP, rebuilt in plain torch (its first layers are the 'backbone')."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model.load_state_dict(load_file(str(root / "model.safetensors")), strict=True)
    return model.eval()


def _export(model: torch.nn.Sequential, source: Path, target: Path) -> None:
    """Embeddings (the backbone's output) per split, the head's logits, label and group."""
    backbone = model[:2]
    for split in ("train", "audit", "eval"):
        frame = pd.read_parquet(source / f"{split}.parquet")
        with torch.no_grad():
            x = torch.tensor(frame[FEATURES].to_numpy(np.float32))
            embeddings = backbone(x).numpy()
            logits = model(x).reshape(-1).numpy()
        out = pd.DataFrame(embeddings.astype(np.float64), columns=[f"e{i}" for i in range(16)])
        out["good"], out["age_group"], out["reference_logits"] = frame["good"], frame["age_group"], logits
        out.to_parquet(target / f"{split}.parquet", index=False)
    head = {k: v.detach().clone() for k, v in model[2].state_dict().items()}  # keys: weight, bias
    save_file(head, str(target / "head.safetensors"))
    (target / "arch.json").write_text(json.dumps({"type": "linear_head", "in_features": 16}))


def test_linear_head_round_trip_reproduces_the_reports_eval_metrics(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "small", rows=(1500, 500, 500))
    model = _backbone_and_head(example.root)
    exported = tmp_path / "embeddings"
    exported.mkdir()
    _export(model, example.root, exported)
    out = tmp_path / "out"
    code = main(["correct", "--model", str(exported / "head.safetensors"),
                 "--arch", str(exported / "arch.json"),
                 "--train", str(exported / "train.parquet"), "--audit", str(exported / "audit.parquet"),
                 "--eval", str(exported / "eval.parquet"), "--label", "good", "--sensitive", "age_group",
                 "--objective", "demographic_parity", "--out", str(out), "--quiet", "--threads", "1"])
    assert code in (0, 3)
    report = json.loads((out / "report.json").read_text())
    corrected = load_file(str(out / "model.safetensors"))
    assert set(corrected) == {"weight", "bias"} and corrected["weight"].shape == (1, 16)
    assert any("reproduces the reference logits" in note for note in report["notes"])
    # put the corrected head back on the backbone and measure the whole model on raw features
    model[2].load_state_dict(corrected)
    frame = pd.read_parquet(example.root / "eval.parquet")
    with torch.no_grad():
        proba = torch.sigmoid(model(torch.tensor(frame[FEATURES].to_numpy(np.float32)))).reshape(-1)
    metrics = classification_metrics(proba.numpy().astype(np.float64), frame["good"].to_numpy(np.float64),
                                     frame["age_group"].to_numpy())
    for key in ("accuracy", "demographic_parity_difference", "equalized_odds_difference"):
        assert metrics[key] == pytest.approx(report["after"]["eval"][key], abs=1e-9), key
    assert report["after"]["eval"]["demographic_parity_difference"] < \
        report["before"]["eval"]["demographic_parity_difference"]


def test_linear_head_keys_are_a_plain_linear_layers() -> None:
    arch = parse_arch({"type": "linear_head", "in_features": 512})
    assert arch.expected_shapes() == {"weight": (1, 512), "bias": (1,)}
    assert set(torch.nn.Linear(512, 1).state_dict()) == set(arch.expected_shapes())
    assert arch.to_dict() == {"type": "linear_head", "in_features": 512}
    with pytest.raises(ValueError, match="unknown field"):
        parse_arch({"type": "linear_head", "in_features": 4, "hidden": [2]})


@pytest.mark.parametrize("extra", [["--method", "finetune"], ["--method", "gradient_ascent"],
                                   ["--scope", "full"], ["--method", "refit"]])
def test_linear_head_takes_every_scope_and_method(tmp_path: Path, extra: list[str]) -> None:
    example = write_small_example(tmp_path / "small")
    exported = tmp_path / "embeddings"
    exported.mkdir()
    _export(_backbone_and_head(example.root), example.root, exported)
    out = tmp_path / "out"
    code = main(["correct", "--model", str(exported / "head.safetensors"),
                 "--arch", str(exported / "arch.json"), "--train", str(exported / "train.parquet"),
                 "--audit", str(exported / "audit.parquet"), "--label", "good", "--sensitive", "age_group",
                 "--objective", "demographic_parity", "--no-robust-eval", "--out", str(out), "--quiet",
                 "--threads", "1", *extra])
    assert code in (0, 3)
    assert set(load_file(str(out / "model.safetensors"))) == {"weight", "bias"}
