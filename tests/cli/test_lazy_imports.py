"""The CLI answers ``--help`` and bad input, and a worker starts listening, without the heavy
libraries: each case runs in a fresh interpreter that reports what it imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.support import ROOT, worker_env
from tests.engine.small_data import export_tensor_datasets, tensor_args, write_small_example
from workers.settings import ServiceSettings

HEAVY = ("torch", "scipy", "pandas", "matplotlib", "jinja2", "sklearn")
CLIENT = ("httpx", "rich")
_REPORT = """
import json, runpy, sys
WATCHED = ("torch._dynamo", "torch.fx.experimental.symbolic_shapes")
sys.argv = ["softunlearn", *json.loads(sys.argv[1])]
code = None
try:
    runpy.run_module("workers.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m or m in WATCHED)}),
      file=sys.stderr)
"""


def imported(args: list[str]) -> tuple[int | None, set[str]]:
    """The exit code of ``softunlearn ARGS`` and the top-level modules it imported (and
    ``torch._dynamo`` and torch's symbolic shapes, when they were)."""
    done = subprocess.run([sys.executable, "-c", _REPORT, json.dumps(args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


@pytest.mark.parametrize(("args", "code"), [
    (["--help"], 0),
    (["correct", "--help"], 0),
    (["submit", "--help"], 0),
    (["worker", "--help"], 0),
    (["correct"], 2),
    (["correct", "--model", "absent.safetensors", "--arch", "absent.json", "--train", "absent.parquet",
      "--audit", "absent.parquet", "--out", "out"], 2),
    (["worker", "--threads", "-1"], 2),
])
def test_help_and_bad_input_import_no_heavy_library(args: list[str], code: int) -> None:
    exit_code, modules = imported(args)
    assert exit_code == code
    assert modules.isdisjoint(HEAVY + CLIENT), sorted(modules & set(HEAVY + CLIENT))


def test_a_worker_listens_without_the_engine(settings: ServiceSettings) -> None:
    """A burst worker on an empty queue registers, listens and stops: the engine never loads."""
    probe = ("import sys; from workers.worker import run_worker; from workers.settings import get_settings; "
             "code = run_worker(get_settings(), burst=True); "
             f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=worker_env(settings, SOFTUNLEARN_LOG_FORMAT="text"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Listening on" in done.stderr
    assert done.stdout.strip() == "0 []"


def test_a_job_on_tensor_datasets_imports_neither_pandas_nor_scipy(tmp_path: Path) -> None:
    """pandas (a second) is for tables and scipy.optimize (half a second) for the QP's fallback LP:
    a whole job on safetensors datasets, report page and weights.parquet included, needs neither."""
    example = write_small_example(tmp_path / "small", reference_logits=True)
    export_tensor_datasets(example.root, tmp_path)
    args = tensor_args(example.args(tmp_path / "out", "--objective", "demographic_parity"), tmp_path)
    exit_code, modules = imported(args)
    assert exit_code in (0, 3)
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "weights.parquet").is_file()
    assert {"torch", "matplotlib"} <= modules
    assert modules.isdisjoint({"pandas", "scipy"}), sorted(modules & {"pandas", "scipy"})


def test_a_job_on_plain_parquet_tables_imports_no_pandas(tmp_path: Path) -> None:
    """Parquet tables whose label, sensitive and reference columns are plain (numbers, strings)
    are read and checked with pyarrow alone: the whole job never imports pandas."""
    example = write_small_example(tmp_path / "small", reference_logits=True)
    exit_code, modules = imported(example.args(tmp_path / "out", "--objective", "demographic_parity"))
    assert exit_code in (0, 3)
    assert (tmp_path / "out" / "report.html").is_file()
    assert "pandas" not in modules


def test_a_full_scope_job_never_loads_torch_dynamo_or_sympy(tmp_path: Path) -> None:
    """torch.func's grad and vjp, and losses under its jvp, import torch._dynamo and sympy on first
    use (1.5 s, a tenth of the Adult full-scope job), and ``autograd.grad`` with tensor
    ``grad_outputs`` torch's symbolic shapes and sympy (0.5 s): the full scope's products avoid them."""
    example = write_small_example(tmp_path / "small")
    exit_code, modules = imported(example.args(tmp_path / "out", "--objective", "demographic_parity",
                                               "--scope", "full"))
    assert exit_code in (0, 3)
    assert "torch" in modules
    assert modules.isdisjoint({"torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sympy"}), \
        sorted(modules & {"torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sympy"})
