"""A small, German-credit-sized tabular problem written as a ready-to-correct example directory.

Rows are synthetic but shaped like the small audits where a correction is noise: a few hundred
rows, a minority group of about a fifth, a group gap the model learned from a proxy feature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from workers.engine.io.architecture import parse_arch
from workers.engine.io.identity import checkpoint_metadata
from workers.engine.models.training import train_mlp

__all__ = ["SmallExample", "export_tensor_datasets", "tensor_args", "write_small_example"]


@dataclass(frozen=True)
class SmallExample:
    """Paths of a written example."""

    root: Path
    label: str = "good"
    sensitive: str = "age_group"

    def args(self, out: Path, *extra: str) -> list[str]:
        """``softunlearn correct`` arguments for this example."""
        d = self.root
        return ["correct", "--model", str(d / "model.safetensors"), "--arch", str(d / "arch.json"),
                "--train", str(d / "train.parquet"), "--audit", str(d / "audit.parquet"),
                "--eval", str(d / "eval.parquet"), "--label", self.label, "--sensitive", self.sensitive,
                "--out", str(out), "--quiet", "--threads", "1", *extra]


def _frame(rng: np.random.Generator, n: int, d: int, coefficients: np.ndarray, minority: float,
           small_group_rows: int) -> pd.DataFrame:
    young = rng.random(n) < minority
    x = rng.normal(size=(n, d))
    x[:, 0] += np.where(young, -1.0, 0.3)
    logits = x @ coefficients + np.where(young, -0.8, 0.2)
    y = (logits + rng.logistic(size=n) > 0).astype(np.int64)
    group = np.where(young, "young", "older").astype(object)
    group[:small_group_rows] = "unknown"
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(d)])
    frame["age_group"] = group
    frame["good"] = y
    return frame


def write_small_example(root: Path, *, seed: int = 0, rows: tuple[int, int, int] = (600, 200, 200),
                        hidden: tuple[int, ...] = (16,), epochs: int = 60, weight_decay: float = 0.0,
                        small_group_rows: int = 0, activation: str = "relu",
                        reference_logits: bool = False, record_identity: bool = False) -> SmallExample:
    """Write train/audit/eval Parquet, an MLP checkpoint trained on train, arch.json, schema.json.

    ``small_group_rows`` rows of every split are put in a third group ``unknown`` (a group too
    small for a stable rate). ``reference_logits`` adds the model's own logits as a column of
    that name; ``record_identity`` saves the checkpoint with its architecture and feature names.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    d = 10
    coefficients = rng.normal(size=d)
    frames = [_frame(rng, n, d, coefficients, 0.2, small_group_rows) for n in rows]
    arch = {"type": "mlp", "in_features": d, "hidden": list(hidden), "activation": activation}
    names = [f"f{i}" for i in range(d)]
    train = frames[0]
    model = train_mlp(parse_arch(arch), train[names].to_numpy(np.float32), train["good"].to_numpy(np.float32),
                      seed=seed, epochs=epochs, batch_size=64, lr=1e-2, weight_decay=weight_decay)
    for name, frame in zip(("train", "audit", "eval"), frames, strict=True):
        if reference_logits:
            with torch.no_grad():
                logits = model(torch.tensor(frame[names].to_numpy(np.float32))).reshape(-1)
            frame["reference_logits"] = logits.numpy().astype(np.float64)
        frame.to_parquet(root / f"{name}.parquet", index=False)
    metadata = checkpoint_metadata(parse_arch(arch), tuple(names)) if record_identity else None
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(root / "model.safetensors"), metadata=metadata)
    (root / "arch.json").write_text(json.dumps(arch), encoding="utf-8")
    (root / "schema.json").write_text(json.dumps({"label": "good", "sensitive": ["age_group"]}),
                                      encoding="utf-8")
    return SmallExample(root)


def export_tensor_datasets(example_root: Path, target: Path, contiguous: bool = True) -> None:
    """The example's three splits (written with ``reference_logits=True``) as safetensors datasets
    in ``target``; ``contiguous=False`` writes the column-major array pandas hands back, as a
    careless export would."""
    names = [f"f{i}" for i in range(10)]
    for split in ("train", "audit", "eval"):
        frame = pd.read_parquet(example_root / f"{split}.parquet")
        codes = (frame["age_group"] == "young").to_numpy().astype(np.int64)
        metadata = {"softunlearn.dataset": json.dumps({"feature_names": names,
                                                       "groups": {"age_group": ["older", "young"]}})}
        x = frame[names].to_numpy(np.float32)  # pandas hands back a column-major (Fortran) array
        x = np.ascontiguousarray(x) if contiguous else x
        save_arrays({"x": x, "good": frame["good"].to_numpy(np.int64), "age_group": codes,
                     "reference_logits": frame["reference_logits"].to_numpy(np.float64)},
                    str(target / f"{split}.safetensors"), metadata=metadata)


def tensor_args(example_args: list[str], folder: Path) -> list[str]:
    """``SmallExample.args`` reading the splits from :func:`export_tensor_datasets`' files."""
    for split in ("train", "audit", "eval"):
        example_args[example_args.index(f"--{split}") + 1] = str(folder / f"{split}.safetensors")
    return example_args
