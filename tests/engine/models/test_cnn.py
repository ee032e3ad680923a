"""The cnn family: the exact Sequential it names, its validation, and correction end to end."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file
from torch import nn

from workers.cli.main import main
from workers.engine.errors import InputError
from workers.engine.io.architecture import parse_arch
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import build_model, train_mlp

ARCH = {"type": "cnn", "input_shape": [1, 8, 8],
        "blocks": [{"out_channels": 4, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2},
                   {"out_channels": 4, "kernel_size": 3, "pool": "avg", "pool_size": 2},
                   {"out_channels": 2, "kernel_size": 1}],
        "hidden": [8], "activation": "relu"}
TINY = {"type": "cnn", "input_shape": [1, 8, 8],
        "blocks": [{"out_channels": 2, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2}],
        "hidden": [4], "activation": "relu"}


def _hand_built(activation: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), activation(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), activation(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 2, 1), activation(), nn.Flatten(),
                         nn.Linear(2, 8), activation(), nn.Linear(8, 1))


def _tiny_hand_built(state: dict[str, torch.Tensor]) -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(32, 4), nn.ReLU(), nn.Linear(4, 1))
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize(("name", "module"), [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_the_built_cnn_is_the_hand_built_sequential(name: str, module: type[nn.Module]) -> None:
    arch = parse_arch({**ARCH, "activation": name})
    reference = _hand_built(module)
    built = build_model(arch)
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()} == arch.expected_shapes()
    assert arch.linear_indices == [9, 11] and arch.head_index == 11 and arch.conv_indices == [0, 3, 6]
    assert arch.input_shape == (1, 8, 8) and arch.flat_features == 2 and arch.head_in_features == 8
    assert parse_arch(arch.to_dict()) == arch
    images = np.random.default_rng(0).normal(size=(5, 1, 8, 8))
    model = HeadModel.from_state(arch, reference.state_dict(), torch.device("cpu"))
    expected = reference.eval()(torch.from_numpy(images).float()).reshape(-1).double()
    assert torch.allclose(model.logits(images), expected, atol=1e-6)
    design = model.design(images)
    assert design.shape == (5, 9)
    assert torch.allclose(design @ model.theta(), expected, atol=1e-5)


@pytest.mark.parametrize(("change", "field"), [
    ({"blocks": [{"out_channels": 2, "kernel_size": 11}]}, "blocks[0].kernel_size"),
    ({"blocks": [{"out_channels": 2, "kernel_size": 3, "pool": "median"}]}, "blocks[0].pool"),
    ({"blocks": [{"out_channels": 2, "kernel_size": 3, "pool": "max", "pool_size": 8}]},
     "blocks[0].pool_size"),
    ({"blocks": [{"out_channels": 2000, "kernel_size": 3}]}, "blocks[0].out_channels"),
    ({"blocks": [{"out_channels": 2, "kernel_size": 3, "stride": 2}]}, "stride"),
    ({"blocks": [{"out_channels": 2, "kernel_size": 1}] * 9}, "blocks"),
    ({"input_shape": [1, 8]}, "input_shape"),
    ({"input_shape": [1, 8, 1024]}, "input_shape[2]"),
    ({"dropout": 0.1}, "dropout"),
])
def test_bad_cnn_json_is_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_arch({**ARCH, **change})


def _write_split(path: Path, rng: np.random.Generator, n: int) -> None:
    """1×8×8 images; a bright top-left patch marks the positives, and group 1 has it more often."""
    group = (rng.random(n) < 0.4).astype(np.int64)
    logits = rng.normal(size=n) + np.where(group == 1, -1.0, 0.5)
    y = (logits + rng.logistic(size=n) > 0).astype(np.int64)
    x = rng.normal(scale=0.5, size=(n, 1, 8, 8))
    x[:, 0, :3, :3] += (2 * y - 1)[:, None, None] * 0.8
    x[:, 0, 5:, 5:] += np.where(group == 1, 1.0, -1.0)[:, None, None]
    save_arrays({"x": np.ascontiguousarray(x, dtype=np.float32), "y": y, "group": group}, str(path))


def write_image_case(root: Path, arch: Mapping[str, object], epochs: int) -> Path:
    """Three seeded 1×8×8 image splits, ``arch.json`` and a model of ``arch`` trained on train."""
    rng = np.random.default_rng(3)
    for split, n in (("train", 240), ("audit", 120), ("eval", 120)):
        _write_split(root / f"{split}.safetensors", rng, n)
    (root / "arch.json").write_text(json.dumps(arch))
    train = load_arrays(str(root / "train.safetensors"))
    model = train_mlp(parse_arch(arch), train["x"].astype(np.float64), train["y"].astype(np.float64),
                      seed=0, epochs=epochs, batch_size=32, lr=0.01, weight_decay=0.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    return root


@pytest.fixture(scope="module")
def cnn_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_case(tmp_path_factory.mktemp("cnn"), TINY, epochs=15)


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["correct", "--model", str(root / "model.safetensors"), "--arch", str(root / "arch.json"),
            "--train", str(root / "train.safetensors"), "--audit", str(root / "audit.safetensors"),
            "--eval", str(root / "eval.safetensors"), "--label", "y", "--sensitive", "group",
            "--out", str(out), "--quiet", "--threads", "1", *extra]


@pytest.mark.parametrize("extra", [[], ["--scope", "full", "--solver", "exact"]])
def test_a_cnn_is_corrected_and_its_checkpoint_runs_in_plain_torch(cnn_example: Path, tmp_path: Path,
                                                                   extra: list[str]) -> None:
    out = tmp_path / "out"
    code = main(_args(cnn_example, out, "--objective", "demographic_parity", "--no-robust-eval", *extra))
    assert code in (0, 3)
    before = load_file(str(cnn_example / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in after.items()} == \
        {k: (v.shape, v.dtype) for k, v in before.items()}
    evaluation = load_arrays(str(cnn_example / "eval.safetensors"))
    with torch.no_grad():
        logits = _tiny_hand_built(after)(torch.from_numpy(evaluation["x"])).reshape(-1).numpy()
    report = json.loads((out / "report.json").read_text())
    accuracy = float(np.mean((logits > 0) == (evaluation["y"] == 1)))
    assert report["after"]["eval"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert parse_arch(report["model"]["architecture"]) == parse_arch(TINY)
    assert report["model"]["influence_scope"] == ("full" if extra else "last_layer")


@pytest.mark.parametrize("method", ["finetune", "gradient_ascent", "retrain_last_k", "scrub", "fisher",
                                    "bad_teacher"])
def test_network_methods_run_on_a_cnn(cnn_example: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "out"
    code = main(_args(cnn_example, out, "--objective", "demographic_parity", "--no-robust-eval",
                      "--method", method, "--epochs", "2"))
    assert code in (0, 3)
    after = load_file(str(out / "model.safetensors"))
    assert set(after) == set(build_model(parse_arch(TINY)).state_dict())
    if method in ("gradient_ascent", "bad_teacher"):  # all layers: the convolution trains too
        before = load_file(str(cnn_example / "model.safetensors"))
        assert not torch.equal(after["0.weight"], before["0.weight"])


def test_robustness_with_pgd_l2_on_images(cnn_example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(_args(cnn_example, out, "--objective", "robustness", "--attack", "pgd", "--attack-norm", "l2",
                      "--attack-epsilon", "0.5", "--attack-steps", "3"))
    assert code in (0, 3)
    assert "robust_accuracy" in json.dumps(json.loads((out / "report.json").read_text()))
