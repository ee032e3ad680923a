"""Bad input to ``softunlearn correct``: a clear error, exit code 2, and no output files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import example_args
from workers.cli.main import main
from workers.engine.examples.common import ExampleInfo


class _Payload:
    """Unpickling this runs ``os.system`` and creates the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture
def example_copy(adult_example: ExampleInfo, tmp_path: Path) -> ExampleInfo:
    """A private copy of the Adult example that a test may spoil."""
    target = tmp_path / "example"
    shutil.copytree(adult_example.out_dir, target)
    from dataclasses import replace
    return replace(adult_example, out_dir=target)


def _run_fails(example: ExampleInfo, out: Path, capsys: pytest.CaptureFixture[str], *extra: str,
               replace: dict[str, str] | None = None) -> str:
    args = example_args(example, out, "--objective", "demographic_parity", *extra)
    for flag, value in (replace or {}).items():
        args[args.index(flag) + 1] = value
    assert main(args) == 2
    assert not out.exists() or not any(out.iterdir()), "outputs were written"
    return capsys.readouterr().err


def test_pickle_checkpoint_is_refused_and_never_loaded(example_copy: ExampleInfo, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(sentinel))
    for name in ("model.pt", "disguised.safetensors"):
        path = tmp_path / name
        path.write_bytes(payload)
        err = _run_fails(example_copy, tmp_path / f"out-{name}", capsys,
                         replace={"--model": str(path)})
        assert "pickle" in err and "refused" in err
    assert not sentinel.exists()


def test_checkpoint_shapes_must_match_the_architecture(example_copy: ExampleInfo, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"type": "mlp", "in_features": 103, "hidden": [64, 16],
                                "activation": "relu"}))
    err = _run_fails(example_copy, tmp_path / "out", capsys, replace={"--arch": str(arch)})
    assert "2.weight has shape [32, 64], the architecture needs [16, 64]" in err


def test_nan_in_features_is_refused(example_copy: ExampleInfo, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = example_copy.out_dir / "train.parquet"
    frame = pd.read_parquet(path)
    frame.loc[5, "age"] = np.nan
    frame.to_parquet(path, index=False)
    err = _run_fails(example_copy, tmp_path / "out", capsys)
    assert "NaN or Inf in feature column(s) ['age']" in err


def test_unknown_column_is_named(example_copy: ExampleInfo, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    err = _run_fails(example_copy, tmp_path / "out", capsys, replace={"--label": "salary"})
    assert "['salary'] not in the dataset" in err


def test_single_group_sensitive_attribute_is_refused(example_copy: ExampleInfo, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = example_copy.out_dir / "audit.parquet"
    frame = pd.read_parquet(path)
    frame["sex"] = "Male"
    frame.to_parquet(path, index=False)
    err = _run_fails(example_copy, tmp_path / "out", capsys)
    assert "single group" in err


def test_labels_must_be_binary(example_copy: ExampleInfo, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    path = example_copy.out_dir / "eval.parquet"
    frame = pd.read_parquet(path)
    frame.loc[0, "income"] = 2
    frame.to_parquet(path, index=False)
    err = _run_fails(example_copy, tmp_path / "out", capsys)
    assert "must hold only 0 and 1" in err


def test_bad_spec_values_name_the_field(example_copy: ExampleInfo, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = _run_fails(example_copy, tmp_path / "out", capsys, "--reduction", "1.5")
    assert "objective.reduction must be in (0, 1]" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope.safetensors", "--arch", "a.json", "--train", "t.parquet", "--audit", "v.parquet",
      "--objective", "demographic_parity", "--label", "y", "--sensitive", "s"],
     "--model nope.safetensors is not a file"),
    (["--objective", "demographic_parity"], "name --label and --sensitive"),
    (["--label", "y", "--sensitive", "s"], "no objective"),
])
def test_bad_input_is_refused_before_the_engine_is_imported(tmp_path: Path, args: list[str],
                                                            message: str) -> None:
    """Refusing a typo takes a fraction of a second: no torch, pyarrow or pandas import first."""
    import subprocess
    import sys

    for name in ("m.safetensors", "a.json", "t.parquet", "v.parquet"):
        (tmp_path / name).write_bytes(b"")
    files = ["--model", "m.safetensors", "--arch", "a.json", "--train", "t.parquet", "--audit", "v.parquet"]
    argv = ["correct", *(files if "--model" not in args else []), *args, "--out", "out"]
    probe = ("import sys; from workers.cli.main import main; code = main(sys.argv[1:]); "
             "heavy = [m for m in ('torch', 'pyarrow', 'pandas', 'scipy') if m in sys.modules]; "
             "print(code, heavy)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert message in done.stderr and not (tmp_path / "out").exists()
