"""A wrong rebuild is refused: reference logits, recorded architecture, columns matched by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from tests.engine.small_data import SmallExample, write_small_example
from workers.cli.main import main
from workers.engine.io.architecture import ArchSpec, parse_arch
from workers.engine.io.datasets import load_dataset, parse_schema
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import build_model


def _refused(example: SmallExample, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(example.args(out, "--objective", "demographic_parity", "--no-robust-eval", *extra)) == 2
    assert not out.exists(), "nothing may be written for a refused job"
    return capsys.readouterr().err


def _with_arch(example: SmallExample, tmp_path: Path, **changes: object) -> str:
    arch = {**json.loads((example.root / "arch.json").read_text()), **changes}
    path = tmp_path / "other-arch.json"
    path.write_text(json.dumps(arch), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("activation", ["leaky_relu", "gelu", "silu", "tanh", "sigmoid"])
def test_every_activation_rebuilds_the_plain_torch_module(activation: str) -> None:
    arch = parse_arch({"type": "mlp", "in_features": 7, "hidden": [5, 4], "activation": activation})
    modules = {"leaky_relu": torch.nn.LeakyReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU,
               "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    plain = torch.nn.Sequential(torch.nn.Linear(7, 5), modules[activation](), torch.nn.Linear(5, 4),
                                modules[activation](), torch.nn.Linear(4, 1)).eval()
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    rebuilt = HeadModel.from_state(arch, state, torch.device("cpu"))
    x = np.random.default_rng(0).normal(size=(64, 7))
    with torch.no_grad():
        expected = plain(torch.from_numpy(x).float()).reshape(-1).double()
    assert torch.allclose(rebuilt.logits(x), expected, atol=1e-6)


def test_dropout_layers_shift_the_keys_and_are_off_at_evaluation() -> None:
    arch = parse_arch({"type": "mlp", "in_features": 3, "hidden": [4], "activation": "tanh", "dropout": 0.5})
    assert arch.linear_indices == [0, 3]
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(4, 1))
    assert set(plain.state_dict()) == set(arch.expected_shapes()) == set(build_model(arch).state_dict())
    model = HeadModel.from_state(arch, dict(plain.state_dict()), torch.device("cpu"))
    x = np.ones((2, 3))
    assert torch.equal(model.logits(x), model.logits(x))


def test_a_tanh_checkpoint_given_a_relu_architecture_is_refused(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    example = write_small_example(tmp_path / "tanh", activation="tanh", reference_logits=True)
    message = _refused(example, tmp_path / "out", capsys, "--arch", _with_arch(example, tmp_path,
                                                                               activation="relu"))
    assert "does not reproduce the reference logits" in message
    assert "match activation 'tanh'" in message and "largest difference" in message
    # with the right architecture the same files are corrected
    _run(example, tmp_path / "ok")


def test_shuffled_columns_are_refused_when_only_reference_logits_can_tell(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = write_small_example(tmp_path / "plain", reference_logits=True)
    for split in ("train", "audit", "eval"):
        frame = pd.read_parquet(example.root / f"{split}.parquet")
        columns = list(frame.columns)
        columns[:10] = columns[:10][::-1]
        frame[columns].to_parquet(example.root / f"{split}.parquet", index=False)
    message = _refused(example, tmp_path / "out", capsys)
    assert "feature columns in another order" in message


def test_recorded_feature_names_match_shuffled_columns_by_name(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "named", reference_logits=True, record_identity=True)
    baseline = json.loads(_run(example, tmp_path / "in-order"))
    for split in ("train", "audit", "eval"):
        frame = pd.read_parquet(example.root / f"{split}.parquet")
        frame[list(frame.columns)[::-1]].to_parquet(example.root / f"{split}.parquet", index=False)
    shuffled = json.loads(_run(example, tmp_path / "shuffled"))
    assert shuffled["before"]["eval"]["accuracy"] == baseline["before"]["eval"]["accuracy"]
    assert shuffled["after"]["eval"] == baseline["after"]["eval"]
    assert any("matched by the names the checkpoint records" in n for n in shuffled["notes"])


def _run(example: SmallExample, out: Path) -> str:
    assert main(example.args(out, "--objective", "demographic_parity", "--no-robust-eval")) in (0, 3)
    return (out / "report.json").read_text()


def test_a_recorded_architecture_that_differs_is_refused(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    example = write_small_example(tmp_path / "named", activation="gelu", record_identity=True)
    message = _refused(example, tmp_path / "out", capsys, "--arch", _with_arch(example, tmp_path,
                                                                               activation="silu"))
    assert "saved for another architecture" in message and "'gelu'" in message and "'silu'" in message


def test_a_renamed_column_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = write_small_example(tmp_path / "named", record_identity=True)
    for split in ("train", "audit", "eval"):
        frame = pd.read_parquet(example.root / f"{split}.parquet")
        frame.rename(columns={"f3": "feature_3"}).to_parquet(example.root / f"{split}.parquet", index=False)
    message = _refused(example, tmp_path / "out", capsys)
    assert "['f3']" in message and "renamed" in message


def test_corrected_checkpoint_records_its_identity_and_parent(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "plain", reference_logits=True)
    _run(example, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    parent = hashlib.sha256((example.root / "model.safetensors").read_bytes()).hexdigest()
    identity = json.loads(metadata["softunlearn"])
    assert identity["parent_sha256"] == parent
    assert identity["architecture"] == json.loads((example.root / "arch.json").read_text())
    assert identity["feature_names"] == [f"f{i}" for i in range(10)]


def test_reference_column_is_never_a_feature(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "plain", reference_logits=True)
    schema = parse_schema({"label": "good", "sensitive": ["age_group"],
                           "reference_logits": "reference_logits"})
    data = load_dataset(example.root / "train.parquet", schema, "train")
    assert "reference_logits" not in data.feature_names and data.reference_logits is not None
    assert ArchSpec(in_features=10, hidden=(16,)).in_features == data.features.shape[1]
