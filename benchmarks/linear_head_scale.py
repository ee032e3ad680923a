"""Scale of the ``linear_head`` family: ``python -m benchmarks.linear_head_scale``.

Corrects a logistic head on synthetic 512-wide embeddings with 100 000 and 1 000 000 training
rows (20 000 audit and eval rows) through the CLI, one subprocess per size: ``softunlearn
correct`` with ``--objective demographic_parity --method newton --scope last_layer
--no-robust-eval`` and the engine's defaults otherwise. Records the exit code, wall seconds and
peak RSS of the subprocess (``os.wait4``), the RSS sampled per stage (``/proc/<pid>/status``,
with the stage read off the CLI's progress lines), and the per-stage seconds of ``report.json``.
The subprocess runs under an address-space cap (``RLIMIT_AS``, default 14 GiB) so that it cannot
take a shared machine down; a run that hits it is recorded as failed, with the stage reached.

Data generation and the fit of the head are not timed. The data is written under ``--data``
(default ``/tmp/lh-data``) and deleted after each size unless ``--keep-data``. Prints a markdown
table; writes everything to ``benchmarks/results/linear-head-scale-*.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Case", "Measurement", "main", "markdown_table", "prepare_case", "run_case"]

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (100_000, 1_000_000)
DEFAULT_WIDTH = 512
DEFAULT_HOLDOUT = 20_000
DEFAULT_CAP_GIB = 14.0
GROUPS = ("g0", "g1")
"""Labels of the sensitive codes 0 and 1 (group ``g1`` is the minority, about 35 %)."""
STAGES = ("load", "polish", "influence", "weights", "unlearn", "evaluate")
"""The stages of ``report["timings"]`` shown as columns, in pipeline order. The ``report`` stage
is not among them (the report is built inside it); the table shows it as total − the others."""
READ_PHASE = "read inputs"
"""What the CLI does before its first progress line: imports, reading and validating the files."""
PROGRESS = re.compile(r"^\[\s*[\d.]+s\]\s+\d+%\s+(\S+)")
TRACEBACK_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
OUT_OF_MEMORY = ("MemoryError", "can't allocate", "Unable to allocate", "bad_alloc")
"""What the last stderr line of a run that hit the cap says (torch, numpy, Python, C++)."""
POLL_SECONDS = 0.2
GIB = 1024**3
Say = Callable[[str], None]


# --------------------------------------------------------------------------- synthetic data


@dataclass(frozen=True)
class Truth:
    """The data-generating model: embedding shift of the sensitive group, logistic label model."""

    shift: np.ndarray
    beta: np.ndarray
    intercept: float


def make_truth(width: int, seed: int) -> Truth:
    """A few directions move with the sensitive group (the first three) and drive the label, with
    up to 32 more label directions (``width`` >= 3)."""
    if width < 3:
        raise ValueError(f"the width must be at least 3; got {width}")
    rng = np.random.default_rng(seed)
    shift = np.zeros(width, dtype=np.float32)
    shift[:3] = (1.0, 0.6, -0.5)
    beta = np.zeros(width, dtype=np.float32)
    beta[:3] = (1.2, 0.8, 0.5)
    beta[3:35] = rng.normal(0.0, 0.3, size=len(beta[3:35]))
    return Truth(shift=shift, beta=beta, intercept=-0.4)


def make_split(truth: Truth, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` rows: float32 Gaussian embeddings ``x``, 0/1 label ``y`` (uint8), group code ``group``."""
    rng = np.random.default_rng(seed)
    group = (rng.random(n) < 0.35).astype(np.uint8)
    x = rng.standard_normal((n, truth.beta.shape[0]), dtype=np.float32)
    moved = np.flatnonzero(truth.shift)
    x[:, moved] += group[:, None].astype(np.float32) * truth.shift[moved]
    logits = x @ truth.beta + np.float32(truth.intercept)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.uint8)
    return {"x": x, "y": y, "group": group}


def write_tensor_dataset(split: dict[str, np.ndarray], path: Path) -> None:
    """A tensor dataset (safetensors): ``x``, ``y``, ``group`` with its labels in the metadata."""
    from safetensors.numpy import save_file

    metadata = {"softunlearn.dataset": json.dumps({"groups": {"group": list(GROUPS)}})}
    save_file({k: np.ascontiguousarray(v) for k, v in split.items()}, str(path), metadata=metadata)


def write_parquet(split: dict[str, np.ndarray], path: Path) -> None:
    """A Parquet table: float32 columns ``x0`` … ``x{d-1}``, ``y`` (int8), ``group`` (strings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = split["x"]
    columns = {f"x{j}": pa.array(x[:, j]) for j in range(x.shape[1])}
    columns["y"] = pa.array(split["y"].astype(np.int8))
    columns["group"] = pa.array(np.asarray(GROUPS, dtype=object)[split["group"]])
    pq.write_table(pa.table(columns), path)


WRITERS: dict[str, tuple[str, Callable[[dict[str, np.ndarray], Path], None]]] = {
    "safetensors": (".safetensors", write_tensor_dataset),
    "parquet": (".parquet", write_parquet),
}


# --------------------------------------------------------------------------- the user's head


def _design(x: torch.Tensor, start: int, chunk: int) -> torch.Tensor:
    """Rows ``start`` … ``start + chunk`` of Φ = [x, 1] (float32)."""
    block = x[start:start + chunk]
    return torch.cat([block, torch.ones(block.shape[0], 1)], dim=1)


def _gradient(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, l2: float, chunk: int) -> torch.Tensor:
    """Gradient of Σ log-loss + (λ/2)‖w‖² (bias unregularized), float64, chunked."""
    gradient = torch.zeros(x.shape[1] + 1, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        phi = _design(x, start, chunk)
        gradient += (phi.T @ (torch.sigmoid(phi @ theta.float()) - y[start:start + chunk])).double()
    gradient[:-1] += l2 * theta[:-1]
    return gradient


def _hessian(x: torch.Tensor, theta: torch.Tensor, l2: float, chunk: int) -> torch.Tensor:
    """Hessian of the same objective: float32 products per chunk, summed in float64."""
    d = x.shape[1]
    hessian = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        phi = _design(x, start, chunk)
        p = torch.sigmoid(phi @ theta.float())
        hessian += (phi.T @ (phi * (p * (1 - p))[:, None])).double()
    hessian[:d, :d] += l2 * torch.eye(d, dtype=torch.float64)
    return hessian


def fit_head(x: np.ndarray, y: np.ndarray, l2: float = 1.0, warm_rows: int = 100_000, warm_steps: int = 8,
             full_steps: int = 2, chunk: int = 16_384) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The user's trained head: logistic regression by Newton, ``warm_steps`` on the first
    ``warm_rows`` rows, then ``full_steps`` on all rows (when there are more); approximate at
    1 M rows, which the engine's polish then finishes. Same objective as the engine's head (sum
    form, λ = ``l2``, bias unregularized)."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64)
    warm = min(warm_rows, x.shape[0])
    plan = [warm] * warm_steps + ([x.shape[0]] * full_steps if x.shape[0] > warm else [])
    for rows in plan:
        gradient = _gradient(xt[:rows], yt[:rows], theta, l2, chunk)
        theta = theta - torch.linalg.solve(_hessian(xt[:rows], theta, l2, chunk), gradient)
    final = float(_gradient(xt, yt, theta, l2, chunk).norm())
    state = {"weight": theta[:-1].reshape(1, -1).to(torch.float32).contiguous(),
             "bias": theta[-1:].to(torch.float32).contiguous()}
    return state, {"method": "newton", "warm_rows": warm, "steps_on_rows": plan, "l2_reg": l2,
                   "final_gradient_norm": final, "final_gradient_norm_per_row": final / x.shape[0]}


# --------------------------------------------------------------------------- the lower bound


def gemm_rate(threads: int, width: int = DEFAULT_WIDTH + 1, rows: int = 8192, reps: int = 5) -> float:
    """This machine's float64 GEMM rate in multiply-adds per second: the best of ``reps``
    general products [width × rows] @ [rows × width] (numpy's BLAS, ``threads`` threads)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    left, right = rng.random((width, rows)), rng.random((rows, width))
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        for _ in range(reps):
            began = time.perf_counter()
            np.dot(left, right)
            best = min(best, time.perf_counter() - began)
    return rows * width * width / best


def gram_lower_bound(n: int, width: int, rate: float) -> float:
    """Seconds for one float64 Gram matrix Φᵀ diag(c) Φ of n × (width + 1) at ``rate``
    multiply-adds per second: n·m²/2 multiply-adds (a symmetric product), nothing else."""
    m = width + 1
    return n * m * m / 2 / rate


# --------------------------------------------------------------------------- one case


@dataclass
class Case:
    """The files of one size and what it took to make them (not part of the measurement)."""

    n: int
    width: int
    root: Path
    paths: dict[str, Path]
    hidden: int
    """Width of the MLP's hidden layer before the head; 0 for logistic regression on the inputs."""
    prepare_seconds: dict[str, float]
    file_bytes: dict[str, int]
    fit: dict[str, Any]


def _holdout(truth: Truth, root: Path, holdout: int, seed: int, suffix: str,
             writer: Callable[[dict[str, np.ndarray], Path], None]) -> dict[str, Path]:
    """Audit and eval splits, written once and shared by every size."""
    paths = {}
    for offset, name in enumerate(("audit", "eval"), start=1):
        paths[name] = root / f"{name}-{holdout}-d{truth.beta.shape[0]}-s{seed}{suffix}"
        if not paths[name].exists():
            writer(make_split(truth, holdout, seed + offset), paths[name])
    return paths


def random_extractor(width: int, hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """The MLP's first layer (``hidden`` × ``width``, He-scaled Gaussian weights, zero bias): a
    stand-in for a trained extractor, whose features the fitted head then uses."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(hidden, width, generator=generator) * (2.0 / width) ** 0.5
    return {"0.weight": weight.contiguous(), "0.bias": torch.zeros(hidden)}


def embed(x: np.ndarray, extractor: dict[str, torch.Tensor], chunk: int = 65_536) -> np.ndarray:
    """φ(x) = relu(x W₁ᵀ + b₁) in float32, chunk by chunk."""
    weight, bias = extractor["0.weight"], extractor["0.bias"]
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            block = torch.from_numpy(x[start:start + chunk])
            out[start:start + block.shape[0]] = torch.relu(block @ weight.T + bias).numpy()
    return out


def prepare_case(n: int, width: int, holdout: int, root: Path, seed: int, fmt: str, say: Say,
                 hidden: int = 0) -> Case:
    """Generate the splits, fit the head on train (on the hidden layer's features when
    ``hidden`` > 0), write the checkpoint and the architecture."""
    from safetensors.torch import save_file

    suffix, writer = WRITERS[fmt]
    root.mkdir(parents=True, exist_ok=True)
    truth = make_truth(width, seed)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    train = make_split(truth, n, seed + 1000 + n)
    seconds["generate_train"] = time.perf_counter() - clock
    clock = time.perf_counter()
    extractor = random_extractor(width, hidden, seed) if hidden else {}
    head, fit = fit_head(embed(train["x"], extractor) if hidden else train["x"], train["y"])
    seconds["fit_head"] = time.perf_counter() - clock
    say(f"n={n}: generated in {seconds['generate_train']:.1f} s, head fitted in {seconds['fit_head']:.1f} s")
    clock = time.perf_counter()
    tag = f"d{width}" + (f"-h{hidden}" if hidden else "")
    paths = {"train": root / f"train-{n}-d{width}-s{seed}{suffix}"}
    writer(train, paths["train"])
    del train
    paths |= _holdout(truth, root, holdout, seed, suffix, writer)
    paths["model"] = root / f"head-{n}-{tag}-s{seed}.safetensors"
    paths["arch"] = root / f"arch-{tag}.json"
    if hidden:
        state = {**extractor, "2.weight": head["weight"], "2.bias": head["bias"]}
        arch = {"type": "mlp", "in_features": width, "hidden": [hidden], "activation": "relu"}
    else:
        state, arch = head, {"type": "linear_head", "in_features": width}
    save_file(state, str(paths["model"]))
    paths["arch"].write_text(json.dumps(arch), encoding="utf-8")
    seconds["write_files"] = time.perf_counter() - clock
    return Case(n, width, root, paths, hidden, seconds, {k: p.stat().st_size for k, p in paths.items()}, fit)


# --------------------------------------------------------------------------- the measured run


@dataclass
class Measurement:
    """One CLI run: exit code, wall seconds, peak RSS, RSS per phase, the report's timings."""

    n: int
    width: int
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    status: str
    stage_reached: str
    phase_peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    peak_virtual_bytes: int = 0
    rss_timeline: list[tuple[float, str, int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    gram_lower_bound_seconds: float = 0.0
    """One float64 Gram matrix at this machine's GEMM rate, measured just before the run."""


def cli_command(case: Case, out: Path, threads: int) -> list[str]:
    """The measured command line (demographic parity, newton, last layer, no robust evaluation)."""
    p = case.paths
    return [sys.executable, "-m", "workers.cli.main", "correct", "--model", str(p["model"]),
            "--arch", str(p["arch"]), "--train", str(p["train"]), "--audit", str(p["audit"]),
            "--eval", str(p["eval"]), "--label", "y", "--sensitive", "group",
            "--objective", "demographic_parity", "--method", "newton", "--scope", "last_layer",
            "--no-robust-eval", "--device", "cpu", "--threads", str(threads), "--out", str(out)]


def _cap(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the child's address space."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, VmPeak of a live process, in bytes (empty once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return {}
    wanted = ("VmRSS", "VmHWM", "VmPeak")
    return {key: int(rest.split()[0]) * 1024 for key, _, rest in (ln.partition(":") for ln in lines)
            if key in wanted}


def _current_stage(stderr: Path, stage: str) -> str:
    """The last stage the CLI's progress lines announced (``stage`` if none yet)."""
    for line in stderr.read_text(encoding="utf-8", errors="replace").splitlines():
        match = PROGRESS.match(line)
        if match:
            stage = match.group(1)
    return stage


@dataclass
class _Watch:
    """What the poller saw of the child."""

    stage: str = READ_PHASE
    phases: dict[str, int] = field(default_factory=dict)
    peak_virtual: int = 0
    hwm: int = 0
    timeline: list[tuple[float, str, int]] = field(default_factory=list)
    """(seconds since start, stage, VmRSS bytes) at every poll."""
    started: float = field(default_factory=time.perf_counter)


def _sample(pid: int, stderr: Path, watch: _Watch) -> None:
    """One poll: the stage now and the RSS. A rise of the high-water mark since the last poll is
    charged to the stage that was running at that poll (approximate at stage boundaries)."""
    status = _proc_status(pid)
    if not status:
        return
    if status.get("VmHWM", 0) > watch.hwm:
        watch.hwm = status["VmHWM"]
        watch.phases[watch.stage] = max(watch.phases.get(watch.stage, 0), watch.hwm)
    watch.stage = _current_stage(stderr, watch.stage)
    rss = status.get("VmRSS", 0)
    watch.phases[watch.stage] = max(watch.phases.get(watch.stage, 0), rss)
    watch.peak_virtual = max(watch.peak_virtual, status.get("VmPeak", 0))
    watch.timeline.append((round(time.perf_counter() - watch.started, 2), watch.stage, rss))


def _wait(proc: subprocess.Popen[bytes], stderr: Path, timeout: float) -> tuple[int, int, float, _Watch]:
    """Poll until the child exits (killed after ``timeout`` s): exit code, peak RSS, wall s, watch."""
    started, watch = time.perf_counter(), _Watch()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss * 1024, wall, watch
        if time.perf_counter() - started > timeout:
            proc.kill()
        _sample(proc.pid, stderr, watch)
        time.sleep(POLL_SECONDS)


def _where(tail: list[str]) -> str:
    """``file:line function`` of the innermost traceback frame in ``tail`` ('' if none)."""
    frames = [m for m in (TRACEBACK_FRAME.match(line) for line in tail) if m]
    return f"{Path(frames[-1].group(1)).name}:{frames[-1].group(2)} {frames[-1].group(3)}" if frames else ""


def _short(message: str) -> str:
    """An allocation failure as one short phrase; other messages cut at 160 characters."""
    wanted = re.search(r"tried to allocate (\d+) bytes", message)
    if wanted:
        return f"torch could not allocate {int(wanted.group(1)) / 1e9:.2f} GB"
    return message if len(message) <= 160 else message[:157] + "..."


def _status(returncode: int, tail: list[str], stage: str, cap_gib: float) -> str:
    """The table's reading of an exit code."""
    last = tail[-1] if tail else ""
    if returncode == 0:
        return "ok (target met)"
    if returncode == 3:
        return "ok (target missed)"
    if returncode == 2:
        return f"refused: {_short(last.removeprefix('error: '))}"
    if returncode < 0:
        return f"killed by signal {-returncode} in stage {stage}"
    memory = any(word in last for word in OUT_OF_MEMORY)
    where = f" ({_where(tail)})" if _where(tail) else ""
    return (f"failed at the {cap_gib:g} GiB cap in stage {stage}{where}: {_short(last)}" if memory
            else f"failed (exit {returncode}) in stage {stage}{where}: {_short(last)}")


def run_case(case: Case, work: Path, threads: int, cap_gib: float, timeout: float) -> Measurement:
    """Run the CLI on ``case`` as a capped subprocess and read its report."""
    out, stderr = work / f"out-{case.n}", work / f"stderr-{case.n}.txt"
    shutil.rmtree(out, ignore_errors=True)
    with open(stderr, "wb") as err, open(work / f"stdout-{case.n}.txt", "wb") as std:
        proc = subprocess.Popen(cli_command(case, out, threads), cwd=REPO, stdout=std, stderr=err,
                                preexec_fn=_cap(int(cap_gib * GIB)),
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        returncode, peak, wall, watch = _wait(proc, stderr, timeout)
    head_width = case.hidden or case.width
    bound = gram_lower_bound(case.n, head_width, gemm_rate(threads, head_width + 1))
    tail = stderr.read_text(encoding="utf-8", errors="replace").splitlines()[-12:]
    report_path = out / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    stage = _current_stage(stderr, READ_PHASE)
    return Measurement(case.n, case.width, returncode, wall, peak, _status(returncode, tail, stage, cap_gib),
                       stage, phase_peak_rss_bytes=watch.phases, peak_virtual_bytes=watch.peak_virtual,
                       rss_timeline=watch.timeline, timings=dict(report.get("timings", {})),
                       report=_report_summary(report), stderr_tail=tail, gram_lower_bound_seconds=bound)


def _report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The parts of report.json worth keeping beside the timings."""
    if not report:
        return {}
    pick = ("accuracy", "demographic_parity_difference", "log_loss")
    return {"target": report.get("target"), "target_met": report.get("target_met"),
            "polish": report.get("influence", {}).get("polish"),
            "before_eval": {k: report["before"]["eval"].get(k) for k in pick},
            "after_eval": {k: report["after"]["eval"].get(k) for k in pick},
            "warnings": [w.get("code") if isinstance(w, dict) else w for w in report.get("warnings", [])],
            "influence_computations": _influence_computations(report)}


def _influence_computations(report: dict[str, Any]) -> int:
    """Influences computed in the ``influence`` stage: one at the start of every tracking step,
    accepted or undone (the first is shared with the frontier)."""
    tracking = report.get("tracking", {})
    return int(tracking.get("accepted_steps", 0)) + len(tracking.get("undone", []))


# --------------------------------------------------------------------------- output


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f}" if value else ""


def _seconds(timings: dict[str, float], stage: str) -> str:
    return f"{timings[stage]:.2f}" if stage in timings else ""


def _report_seconds(timings: dict[str, float]) -> str:
    """The report stage: ``total`` less the timed stages (it is not in its own report)."""
    if "total" not in timings:
        return ""
    return f"{timings['total'] - sum(v for k, v in timings.items() if k != 'total'):.2f}"


def _ratio(row: Measurement) -> str:
    """The influence stage's seconds over the Gram lower bound, in all and per influence
    computation (``2.37 (2 × 1.19)``)."""
    if "influence" not in row.timings or row.gram_lower_bound_seconds <= 0:
        return ""
    ratio = row.timings["influence"] / row.gram_lower_bound_seconds
    count = int(row.report.get("influence_computations", 0))
    return f"{ratio:.2f} ({count} × {ratio / count:.2f})" if count > 1 else f"{ratio:.2f}"


def markdown_table(rows: Sequence[Measurement]) -> str:
    """One line per size: exit code, wall s, peak RSS, the report's stage seconds."""
    head = ["n train", "d", "status", "exit", "wall s", "peak RSS GB", "outside stages s",
            *(f"{s} s" for s in STAGES), "report s", "total s", "Gram bound s",
            "influence / bound (per computation)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|" + "---:|" * (len(head) - 4)]
    for row in rows:
        total = row.timings.get("total")
        outside = f"{row.wall_seconds - total:.1f}" if total is not None else ""
        cells = [f"{row.n:,}", str(row.width), row.status, str(row.returncode), f"{row.wall_seconds:.1f}",
                 _gb(row.peak_rss_bytes), outside, *(_seconds(row.timings, s) for s in STAGES),
                 _report_seconds(row.timings), _seconds(row.timings, "total"),
                 f"{row.gram_lower_bound_seconds:.2f}", _ratio(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_memory(rows: Sequence[Measurement]) -> str:
    """Peak RSS per phase (sampled every 0.2 s; the read phase is before the first stage)."""
    phases = [READ_PHASE, *STAGES, "report", "done"]
    head = ["n train", *phases[:-1], "writing outputs", "peak virtual GB"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [f"{row.n:,}", *(_gb(row.phase_peak_rss_bytes.get(p, 0)) for p in phases),
                 _gb(row.peak_virtual_bytes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "nproc": os.cpu_count(), "ram_bytes": pages, "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.linear_head_scale",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="training rows")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="embedding width d")
    parser.add_argument("--hidden", type=int, default=0,
                        help="an MLP with one ReLU layer this wide before the head (0: logistic regression)")
    parser.add_argument("--holdout", type=int, default=DEFAULT_HOLDOUT, help="rows of audit and of eval")
    parser.add_argument("--format", choices=sorted(WRITERS), default="safetensors",
                        help="dataset files: tensor datasets (default) or Parquet")
    parser.add_argument("--cap-gib", type=float, default=DEFAULT_CAP_GIB,
                        help="address-space cap of the measured subprocess (RLIMIT_AS)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the CLI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/lh-data"), help="where the data is written")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated files")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _remove(case: Case, keep_shared: bool) -> None:
    """Delete what the benchmark wrote for ``case`` (the audit/eval splits and the architecture,
    shared by the sizes, only when ``keep_shared`` is false); nothing else under its folder."""
    for key, path in case.paths.items():
        if key in ("train", "model") or not keep_shared:
            path.unlink(missing_ok=True)
    shutil.rmtree(case.root / f"out-{case.n}", ignore_errors=True)
    for log in ("stdout", "stderr"):
        (case.root / f"{log}-{case.n}.txt").unlink(missing_ok=True)


def _measure_all(args: argparse.Namespace, say: Say) -> tuple[list[Case], list[Measurement]]:
    """Prepare and run every size in turn, smallest first; unless ``--keep-data``, delete each
    size's files after its run, and the shared ones (and the folder, if then empty) at the end."""
    cases, rows = [], []
    for n in sorted(args.sizes):
        case = prepare_case(n, args.width, args.holdout, args.data, args.seed, args.format, say, args.hidden)
        os.sync()  # the run must not compete with the write-back of its own freshly written inputs
        say(f"n={n}: running the CLI (cap {args.cap_gib:g} GiB)")
        row = run_case(case, args.data, args.threads, args.cap_gib, args.timeout)
        say(f"n={n}: {row.status}, {row.wall_seconds:.1f} s, peak RSS {row.peak_rss_bytes / 1e9:.2f} GB")
        cases.append(case)
        rows.append(row)
        if not args.keep_data:
            _remove(case, keep_shared=True)
    if not args.keep_data and cases:
        _remove(cases[-1], keep_shared=False)
        with contextlib.suppress(OSError):
            args.data.rmdir()
    return cases, rows


def write_results(out: Path, prefix: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``out/PREFIX-<UTC stamp>.json``; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{prefix}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run every size, print the tables, write the JSON; returns 0."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    say: Say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    machine = machine_facts()
    cases, rows = _measure_all(args, say)
    machine["load_average_at_end"] = list(os.getloadavg())
    tables = {"runs": markdown_table(rows), "memory": markdown_memory(rows)}
    payload = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "command": " ".join(cli_command(cases[0], Path("OUT"), args.threads)[1:]) if cases else "",
               "cases": [asdict(c) for c in cases], "runs": [asdict(r) for r in rows], "markdown": tables}
    path = write_results(args.out, "linear-head-scale", payload)
    family = f"mlp [{args.width} → {args.hidden} → 1]" if args.hidden else "linear_head"
    print(f"## {family}, d = {args.width}, demographic_parity, newton, last_layer, robust evaluation OFF "
          f"({args.format} datasets, {args.threads} thread(s), RLIMIT_AS {args.cap_gib:g} GiB)\n")
    print(tables["runs"])
    print("### Peak RSS by phase (GB, sampled)\n")
    print(tables["memory"])
    loads = "/".join(f"{v:.2f}" for v in machine["load_average_at_start"])
    print(f"{machine['nproc']} cores, {machine['ram_bytes'] / GIB:.1f} GiB RAM, torch {machine['torch']}; "
          f"load average at start {loads}; results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
