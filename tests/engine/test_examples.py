"""The real-data examples: files, columns, loadability, baseline quality, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workers.engine.errors import InputError
from workers.engine.examples.builder import EXAMPLE_FILES, build_example
from workers.engine.examples.common import ExampleInfo
from workers.engine.io.architecture import ArchSpec, load_arch, parse_arch
from workers.engine.io.datasets import load_dataset, parse_schema
from workers.engine.models.training import build_model, train_mlp

MIN_ACCURACY = {"adult": 0.83, "bank": 0.88}
SENSITIVE = {"adult": ("sex", {"Female", "Male"}), "bank": ("age_group", {"under_25", "25_and_over"})}
LABEL = {"adult": "income", "bank": "y"}


def load_arch_from(in_features: int, hidden: list[int]) -> ArchSpec:
    """An ArchSpec through the same validation the API uses."""
    return parse_arch({"type": "mlp", "in_features": in_features, "hidden": hidden})


@pytest.fixture(scope="module", params=["adult", "bank"])
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """One example built into a fresh directory (shared by the tests of this module)."""
    name = request.param
    return build_example(name, tmp_path_factory.mktemp(name) / "example", seed=0)


def test_writes_exactly_the_example_files(example: ExampleInfo) -> None:
    assert sorted(p.name for p in example.out_dir.iterdir()) == sorted(EXAMPLE_FILES)
    assert set(example.paths) == set(EXAMPLE_FILES)
    assert not [p for p in example.out_dir.parent.iterdir() if p.name.endswith(".partial")]
    attribution = (example.out_dir / "ATTRIBUTION").read_text(encoding="utf-8")
    assert "CC BY 4.0" in attribution and "UCI Machine Learning Repository" in attribution
    assert "CC BY 4.0" in (example.out_dir / "README.md").read_text(encoding="utf-8")


def test_columns_are_features_then_label_then_sensitive(example: ExampleInfo) -> None:
    label, (sensitive, groups) = LABEL[example.name], SENSITIVE[example.name]
    assert example.label == label and example.sensitive == (sensitive,)
    for role, n in (("train", example.n_train), ("audit", example.n_audit), ("eval", example.n_eval)):
        frame = pd.read_parquet(example.out_dir / f"{role}.parquet")
        assert len(frame) == n
        assert list(frame.columns[-3:]) == [label, sensitive, "reference_logits"]
        features = frame.columns[:-3]
        assert len(features) == example.in_features
        assert all(isinstance(c, str) and c.isascii() for c in frame.columns)
        assert all(frame[c].dtype == np.float64 for c in features)
        assert set(frame[label].unique()) == {0, 1}
        assert set(frame[sensitive].map(type)) == {str}
        assert set(frame[sensitive].unique()) == groups


def test_datasets_load_with_the_schema(example: ExampleInfo) -> None:
    schema = parse_schema(json.loads((example.out_dir / "schema.json").read_text(encoding="utf-8")))
    assert schema.label == example.label and schema.sensitive == example.sensitive
    assert schema.reference_logits == "reference_logits"
    for role in ("train", "audit", "eval"):
        dataset = load_dataset(example.out_dir / f"{role}.parquet", schema, name=role)
        assert dataset.features.shape[1] == example.in_features
        assert np.isfinite(dataset.features).all()


def test_train_statistics_standardize_numerics(example: ExampleInfo) -> None:
    train = pd.read_parquet(example.out_dir / "train.parquet")
    assert abs(float(train["age"].mean())) < 1e-9
    assert float(train["age"].std(ddof=0)) == pytest.approx(1.0)


def test_checkpoint_loads_strictly_and_meets_accuracy(example: ExampleInfo) -> None:
    arch = load_arch(example.out_dir / "arch.json")
    assert arch.in_features == example.in_features and arch.hidden == (64, 32)
    state = load_file(str(example.out_dir / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in state.values())
    model = build_model(arch)
    model.load_state_dict(state, strict=True)
    schema = parse_schema({"label": example.label, "sensitive": list(example.sensitive)})
    evaluation = load_dataset(example.out_dir / "eval.parquet", schema)
    with torch.no_grad():
        logits = model(torch.tensor(evaluation.features, dtype=torch.float32)).squeeze(1).numpy()
    accuracy = float(np.mean((logits > 0) == (evaluation.labels == 1)))
    assert accuracy == pytest.approx(example.eval_accuracy, abs=1e-6)
    assert accuracy > MIN_ACCURACY[example.name]


def test_same_seed_gives_identical_checkpoint(example: ExampleInfo, tmp_path: Path) -> None:
    again = build_example(example.name, tmp_path / "again", seed=0)  # type: ignore[arg-type]
    for name in ("model.safetensors", "arch.json", "schema.json"):
        assert (again.out_dir / name).read_bytes() == (example.out_dir / name).read_bytes()
    for role in ("train", "audit", "eval"):
        first = pd.read_parquet(example.out_dir / f"{role}.parquet")
        pd.testing.assert_frame_equal(first, pd.read_parquet(again.out_dir / f"{role}.parquet"))


def test_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="not empty"):
        build_example("bank", target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]


def test_overwrite_replaces_the_example_files(tmp_path: Path) -> None:
    target = tmp_path / "bank"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old")
    info = build_example("bank", target, seed=1, overwrite=True)
    assert (target / "model.safetensors").read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    assert info.paths["train.parquet"] == target / "train.parquet"


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    def boom(message: str) -> None:
        if "writing files" in message:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        build_example("bank", tmp_path / "bank", progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_unknown_example_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="adult, bank, colored-mnist"):
        build_example("compas", tmp_path / "x")  # type: ignore[arg-type]


def test_train_mlp_is_deterministic_and_uses_sample_weights() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(np.float64)
    arch = load_arch_from(3, [4])
    first = train_mlp(arch, X, y, seed=3, epochs=3, batch_size=32, lr=1e-2, weight_decay=0.0)
    second = train_mlp(arch, X, y, seed=3, epochs=3, batch_size=32, lr=1e-2, weight_decay=0.0)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    ones = train_mlp(arch, X, y, seed=3, epochs=3, batch_size=32, lr=1e-2, weight_decay=0.0,
                     sample_weight=np.full(200, 2.0))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in
               zip(first.state_dict().values(), ones.state_dict().values(), strict=True))
    weighted = train_mlp(arch, X, y, seed=3, epochs=3, batch_size=32, lr=1e-2, weight_decay=0.0,
                         sample_weight=np.linspace(0.0, 1.0, 200))
    assert not torch.equal(first.state_dict()["0.weight"], weighted.state_dict()["0.weight"])


def test_build_model_layout() -> None:
    model = build_model(load_arch_from(5, []))
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    deep = build_model(load_arch_from(5, [7, 3]))
    assert [type(m).__name__ for m in deep] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert {k: tuple(v.shape) for k, v in deep.state_dict().items()} == \
        load_arch_from(5, [7, 3]).expected_shapes()
