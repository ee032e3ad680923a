"""What every example shares: its summary, and building it atomically beside its directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from workers.engine.errors import InputError

__all__ = ["ExampleInfo", "Progress", "build_atomically"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExampleInfo:
    """What :func:`workers.engine.examples.builder.build_example` wrote and how good the baseline model is."""

    name: str
    out_dir: Path
    paths: dict[str, Path]
    label: str
    sensitive: tuple[str, ...]
    n_train: int
    n_audit: int
    n_eval: int
    in_features: int
    eval_accuracy: float
    train_seconds: float


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite``; create its parent."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"--out {out_dir} exists and is not empty; choose a new directory or "
                         "pass overwrite=True (--overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _publish(staging: Path, out_dir: Path, files: tuple[str, ...]) -> None:
    """Move the finished files into ``out_dir`` (a single rename when it does not exist yet)."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for name in files:
        os.replace(staging / name, out_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


def build_atomically(name: str, out_dir: Path, files: tuple[str, ...], overwrite: bool, say: Progress,
                     build_into: Callable[[Path], ExampleInfo]) -> ExampleInfo:
    """Run ``build_into(staging)`` in a temporary directory beside ``out_dir`` and move ``files``
    in only when all of them are written, so a failure leaves no half example.

    Raises:
        InputError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        built = build_into(staging)
        _publish(staging, out_dir, files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"{name}: example written to {out_dir}")
    return replace(built, out_dir=out_dir, paths={file: out_dir / file for file in files})
