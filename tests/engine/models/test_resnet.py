"""The resnet family: torchvision's keys, the outputs of an independent functional ResNet, its
validation, and correction end to end (both scopes, every network method)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_arrays
from safetensors.torch import load_file, save_file

from tests.engine.models.test_cnn import write_image_case
from workers.cli.main import main
from workers.engine.config import MethodConfig, MethodName
from workers.engine.errors import CheckpointError, InputError
from workers.engine.io.architecture import parse_arch
from workers.engine.io.checkpoint import read_checkpoint
from workers.engine.models.head_model import HeadModel
from workers.engine.models.training import build_model
from workers.engine.unlearning.methods.base import NetworkTask
from workers.engine.unlearning.methods.registry import apply_network_method

DATA = Path(__file__).parent / "data"
TINY = {"type": "resnet", "depth": 18, "input_shape": [1, 8, 8], "small_input": True, "base_width": 2}
TORCHVISION_PARAMETERS = {18: 11_177_025, 34: 21_285_185}  # sum(p.numel()) of resnetNN(num_classes=1)


def _torchvision_keys(depth: int) -> list[tuple[str, tuple[int, ...]]]:
    entries = json.loads((DATA / f"torchvision_resnet{depth}_keys.json").read_text())["keys"]
    return [(key, tuple(shape)) for key, shape in entries]


@pytest.mark.parametrize("depth", [18, 34])
def test_keys_and_shapes_are_torchvisions(depth: int) -> None:
    arch = parse_arch({"type": "resnet", "depth": depth, "input_shape": [3, 224, 224]})
    built = build_model(arch)
    assert [(k, tuple(v.shape)) for k, v in built.state_dict().items()] == _torchvision_keys(depth)
    counters = set(arch.counter_keys())
    assert {k for k, _ in _torchvision_keys(depth)} == set(arch.expected_shapes()) | counters
    assert all(k.endswith("num_batches_tracked") for k in counters)
    count = sum(p.numel() for p in built.parameters())
    assert arch.parameter_count() == TORCHVISION_PARAMETERS[depth] == count
    assert arch.head_in_features == 512 and arch.head_name == "fc"
    assert parse_arch(arch.to_dict()) == arch


def test_small_input_and_base_width_keep_the_keys() -> None:
    small = parse_arch({"type": "resnet", "depth": 18, "input_shape": [1, 28, 28], "small_input": True,
                        "base_width": 8})
    keys = [k for k, _ in _torchvision_keys(18)]
    assert list(build_model(small).state_dict()) == keys
    shapes = small.expected_shapes()
    assert shapes["conv1.weight"] == (8, 1, 3, 3) and shapes["fc.weight"] == (1, 64)
    assert shapes["layer4.0.downsample.0.weight"] == (64, 32, 1, 1)
    assert "maxpool" not in small.resnet.module_names  # type: ignore[union-attr]


def _norm(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)


def _functional_resnet(state: dict[str, torch.Tensor], x: torch.Tensor, depth: int,
                       small: bool) -> torch.Tensor:
    """An independent ResNet written from the paper's description, reading torchvision's keys."""
    x = F.conv2d(x, state["conv1.weight"], stride=1 if small else 2, padding=1 if small else 3)
    x = F.relu(_norm(x, state, "bn1"))
    if not small:
        x = F.max_pool2d(x, 3, 2, 1)
    for stage, count in enumerate({18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]):
        for block in range(count):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            out = F.relu(_norm(F.conv2d(x, state[f"{prefix}.conv1.weight"], stride=stride, padding=1), state,
                               f"{prefix}.bn1"))
            out = _norm(F.conv2d(out, state[f"{prefix}.conv2.weight"], padding=1), state, f"{prefix}.bn2")
            if f"{prefix}.downsample.0.weight" in state:
                x = _norm(F.conv2d(x, state[f"{prefix}.downsample.0.weight"], stride=stride), state,
                          f"{prefix}.downsample.1")
            x = F.relu(out + x)
    return (x.mean(dim=(2, 3)) @ state["fc.weight"].T + state["fc.bias"]).reshape(-1)


def _random_state(arch_json: dict[str, object], seed: int) -> dict[str, torch.Tensor]:
    """A state dict with non-trivial BatchNorm statistics (fresh ones are the identity)."""
    model = build_model(parse_arch(arch_json))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith(("running_mean", "bn1.bias", "bn2.bias", "downsample.1.bias")):
            value = 0.2 * torch.randn(value.shape, generator=generator)
        state[key] = value
    return state


@pytest.mark.parametrize(("arch_json", "side"), [
    ({"type": "resnet", "depth": 18, "input_shape": [3, 32, 32]}, 32),
    ({"type": "resnet", "depth": 34, "input_shape": [1, 16, 16], "small_input": True, "base_width": 4}, 16),
])
def test_outputs_equal_an_independent_functional_resnet(arch_json: dict[str, object], side: int) -> None:
    arch = parse_arch(arch_json)
    state = _random_state(arch_json, 0)
    channels = arch.input_shape[0]
    images = np.random.default_rng(1).normal(size=(6, channels, side, side))
    model = HeadModel.from_state(arch, state, torch.device("cpu"))
    with torch.no_grad():
        expected = _functional_resnet(state, torch.from_numpy(images).float(), arch.resnet.depth,  # type: ignore[union-attr]
                                      arch.resnet.small_input).double()  # type: ignore[union-attr]
    assert torch.allclose(model.logits(images), expected, atol=1e-6)
    design = model.design(images)
    assert design.shape == (6, arch.head_in_features + 1)
    assert torch.allclose(design @ model.theta(), expected, atol=1e-5)


def test_a_checkpoint_without_batch_counters_loads_and_gets_them(tmp_path: Path) -> None:
    arch = parse_arch(TINY)
    state = {k: v for k, v in build_model(arch).state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "m.safetensors"))
    loaded = read_checkpoint(tmp_path / "m.safetensors", arch).state
    assert set(loaded) == set(arch.expected_shapes()) | set(arch.counter_keys())
    assert loaded["bn1.num_batches_tracked"].dtype == torch.int64
    save_file({**state, "bn1.num_batches_tracked": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="num_batches_tracked must be an int64 scalar"):
        read_checkpoint(tmp_path / "bad.safetensors", arch)
    save_file({**state, "fc.bias": torch.zeros(1, dtype=torch.int64)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(CheckpointError, match="floating dtype"):
        read_checkpoint(tmp_path / "int.safetensors", arch)


@pytest.mark.parametrize(("change", "field"), [
    ({"depth": 50}, "depth"),
    ({"depth": True}, "depth"),
    ({"base_width": 0}, "base_width"),
    ({"input_shape": [1, 4, 4]}, r"input_shape\[1\]"),
    ({"input_shape": [1, 8]}, "input_shape"),
    ({"small_input": "yes"}, "small_input"),
    ({"blocks": []}, "blocks"),
])
def test_bad_resnet_json_is_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field):
        parse_arch({**TINY, **change})


@pytest.fixture(scope="module")
def resnet_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_case(tmp_path_factory.mktemp("resnet"), TINY, epochs=8)


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["correct", "--model", str(root / "model.safetensors"), "--arch", str(root / "arch.json"),
            "--train", str(root / "train.safetensors"), "--audit", str(root / "audit.safetensors"),
            "--eval", str(root / "eval.safetensors"), "--label", "y", "--sensitive", "group",
            "--objective", "demographic_parity", "--no-robust-eval", "--out", str(out), "--quiet",
            "--threads", "1", *extra]


def _check_output(root: Path, out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The corrected checkpoint has the input's keys, shapes and dtypes, and the report's eval
    accuracy is that of the checkpoint run by the independent functional ResNet."""
    before = load_file(str(root / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert {k: (v.shape, v.dtype) for k, v in after.items()} == \
        {k: (v.shape, v.dtype) for k, v in before.items()}
    evaluation = load_arrays(str(root / "eval.safetensors"))
    with torch.no_grad():
        logits = _functional_resnet(after, torch.from_numpy(evaluation["x"]), 18, True).numpy()
    report = json.loads((out / "report.json").read_text())
    accuracy = np.mean((logits > 0) == (evaluation["y"] == 1))
    assert report["after"]["eval"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    return before, after


@pytest.mark.parametrize("extra", [[], ["--scope", "full", "--solver", "cg", "--no-frontier"]])
def test_a_resnet_is_corrected_and_runs_in_plain_torch(resnet_example: Path, tmp_path: Path,
                                                       extra: list[str]) -> None:
    out = tmp_path / "out"
    assert main(_args(resnet_example, out, *extra)) in (0, 3)
    before, after = _check_output(resnet_example, out)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["influence_scope"] == ("full" if extra else "last_layer")
    for key in before:
        if "running" in key or "num_batches" in key:
            assert torch.equal(before[key], after[key]), key  # BatchNorm statistics are never updated
        elif not extra and not key.startswith("fc."):
            assert torch.equal(before[key], after[key]), key  # last_layer touches fc only


@pytest.mark.parametrize("method", ["finetune", "gradient_ascent", "retrain_last_k", "scrub", "fisher",
                                    "bad_teacher"])
def test_network_methods_run_on_a_resnet(resnet_example: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "out"
    assert main(_args(resnet_example, out, "--method", method, "--epochs", "2")) in (0, 3)
    before, after = _check_output(resnet_example, out)
    for key in before:
        if "running" in key or "num_batches" in key:
            assert torch.equal(before[key], after[key]), key
    report = json.loads((out / "report.json").read_text())
    if report["tracking"]["accepted_steps"] and method in ("gradient_ascent", "bad_teacher"):  # all units
        assert not torch.equal(after["conv1.weight"], before["conv1.weight"])


def test_method_layers_counts_resnet_units(resnet_example: Path, tmp_path: Path) -> None:
    code = main(_args(resnet_example, tmp_path / "out", "--method", "retrain_last_k", "--layers", "7"))
    assert code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("method", "layers", "trained"), [
    ("finetune", 2, ("layer4.", "fc.")),
    ("retrain_last_k", 1, ("fc.",)),
    ("finetune", 0, ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")),
])
def test_method_layers_picks_resnet_units_and_keeps_batch_norm_statistics(
        resnet_example: Path, method: MethodName, layers: int, trained: tuple[str, ...]) -> None:
    arch = parse_arch(TINY)
    state = load_file(str(resnet_example / "model.safetensors"))
    model = HeadModel.from_state(arch, state, torch.device("cpu"))
    train = load_arrays(str(resnet_example / "train.safetensors"))
    network = build_model(arch)
    network.load_state_dict(state)
    eps = torch.where(torch.from_numpy(train["group"]) == 1, -0.5, 0.0).double()
    task = NetworkTask(arch=arch, network=network, original=model.network,
                       features=torch.from_numpy(train["x"]), labels=torch.from_numpy(train["y"]).float(),
                       eps=eps, seed=0,
                       config=MethodConfig(name=method, layers=layers, epochs=2, learning_rate=0.01))
    after = apply_network_method(task).state
    assert set(after) == set(state)
    for key, value in state.items():
        statistic = "running" in key or "num_batches" in key
        changed = not torch.equal(value, after[key])
        if statistic:
            assert not changed, key
        elif key.endswith(".weight") and key.startswith(trained):
            assert changed, key
        elif not key.startswith(trained):
            assert not changed, key
