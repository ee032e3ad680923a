"""The image example per scope and method: ``python -m benchmarks.image_example [--quick]``.

Builds the Colored-MNIST example once (``softunlearn example colored-mnist``, seed 0) into a
temporary folder outside the repository, then runs ``softunlearn correct`` on it as one subprocess
per row, in turn, with the example's ``schema.json`` and ``spec.json`` (robust evaluation off) and
the row's flags: scope ``last_layer`` × every method × weighting schemes ``qp`` and ``soft-2.3``
for ``demographic_parity``; ``newton`` for ``equal_opportunity``; a small ``resnet`` (ResNet-18,
``base_width`` 4, trained here on the same train split with ``train_mlp``) with ``newton``; and
scope ``full`` with ``newton`` (minutes per row; left out by ``--quick``); with ``--resnet-full
SOLVER ...`` also the resnet at scope ``full`` with ``newton`` per solver and scheme. ``--only TEXT``
keeps the rows whose name contains TEXT. Every number is read from the run's ``report.json``, but
the peak RSS (``ru_maxrss`` of the subprocess). Prints markdown tables and writes everything to
``benchmarks/results/image-example-*.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import save_file

from benchmarks.linear_head_scale import machine_facts, write_results
from benchmarks.table import markdown_timings
from workers.engine.evaluation.metrics import headline_metric
from workers.engine.examples.builder import ExampleName, build_example
from workers.engine.examples.common import ExampleInfo
from workers.engine.io.architecture import parse_arch
from workers.engine.io.datasets import REFERENCE_COLUMN
from workers.engine.models.training import train_mlp

__all__ = ["Job", "ModelFiles", "Outcome", "build_models", "cli_command", "main", "markdown_outcomes", "plan",
           "run_job", "select", "write_spec"]

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
EXAMPLE: ExampleName = "colored-mnist"
METHODS = ("newton", "refit", "retrain_last_k", "finetune", "gradient_ascent", "scrub", "fisher",
           "bad_teacher")
SCHEMES = ("qp", "soft-2.3")
SPLITS = ("train", "audit", "eval")
DEFAULT_THREADS = torch.get_num_threads()
"""torch's thread count before ``--threads`` changes it (what ``softunlearn example`` trains on)."""
METRICS = ("accuracy", "demographic_parity_difference", "equal_opportunity_difference")
RESNET_ARCH = {"type": "resnet", "depth": 18, "input_shape": [3, 28, 28], "small_input": True,
               "base_width": 4}
RESNET_EPOCHS, RESNET_BATCH_SIZE, RESNET_LR, RESNET_WEIGHT_DECAY = 12, 64, 3e-3, 1e-4
"""Adam settings of the resnet (the cnn's batch, lr and weight decay; ≈ 35 s on 1 thread)."""
FULL_SOLVERS = ("auto", "cg", "ekfac", "lissa", "exact")
"""``--resnet-full`` choices: the CLI's ``--solver`` values."""
RESNET_FULL_CHUNK = 256
"""``influence.chunk_size`` of the resnet's full-scope rows: at the default 8192 the whole train
split (3,000 rows) is one chunk and the CLI estimates ≈ 76 GiB of activations and refuses it
(``influence.max_memory_gb`` 8); 256 rows bring the estimate under 8 GiB."""
POLL_SECONDS = 0.5
"""How often a running row is checked for its exit (and its timeout)."""
SOLVE_NOTE = "full Newton step solved by"
"""How the report's notes begin a note on a full-scope solve (solver, CG products, sketch rows)."""
GOOD_CUT, MAX_ACCURACY_LOSS = 0.4, 0.02
"""A row "works" when it cuts the targeted eval gap by ≥ 40 % and loses ≤ 2 pp of eval accuracy."""
Say = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One row: which model, influence scope, method, weighting scheme and objective."""

    model: str
    scope: str
    method: str
    scheme: str
    objective: str = "demographic_parity"
    solver: str | None = None
    """The full scope's ``--solver`` (None: the spec's, i.e. ``auto``)."""
    chunk_size: int | None = None
    """``influence.chunk_size`` added to the example's spec (None: the spec's, i.e. the default)."""

    @property
    def name(self) -> str:
        """A file-name-safe label of the row."""
        solver = f"-{self.solver}" if self.solver else ""
        return f"{self.model}-{self.scope}{solver}-{self.method}-{self.scheme}-{self.objective}"

    @property
    def slow(self) -> bool:
        """Full-scope rows take minutes each; ``--quick`` leaves them out."""
        return self.scope == "full"


@dataclass
class Outcome:
    """One measured row, read from the run's ``report.json`` (empty fields when there is none)."""

    job: Job
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int = 0
    target_met: bool | None = None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    cut: float | None = None
    accepted_steps: int | None = None
    undone: int | None = None
    stopped_because: str = ""
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    solve_notes: list[str] = field(default_factory=list)
    """The report's notes on full-scope solves (solver, CG products, sketch rows), one per solve."""
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def works(self) -> bool:
        """Whether the row cut the targeted eval gap enough at a small accuracy cost."""
        if self.cut is None or "accuracy" not in self.before or "accuracy" not in self.after:
            return False
        return self.cut >= GOOD_CUT and self.before["accuracy"] - self.after["accuracy"] <= MAX_ACCURACY_LOSS


def plan(quick: bool, resnet_full: Sequence[str] = ()) -> list[Job]:
    """The rows in run order: cnn last_layer (DP, every method and scheme; EO with newton), resnet
    last_layer newton, then the slow full-scope rows unless ``quick``: cnn newton, and resnet
    newton once per solver in ``resnet_full``."""
    jobs = [Job("cnn", "last_layer", m, s) for m in METHODS for s in SCHEMES]
    jobs += [Job("cnn", "last_layer", "newton", s, "equal_opportunity") for s in SCHEMES]
    jobs += [Job("resnet", "last_layer", "newton", s) for s in SCHEMES]
    jobs += [Job("cnn", "full", "newton", s) for s in SCHEMES]
    jobs += [Job("resnet", "full", "newton", s, solver=solver, chunk_size=RESNET_FULL_CHUNK)
             for solver in resnet_full for s in SCHEMES]
    return [job for job in jobs if not (quick and job.slow)]


def select(jobs: Sequence[Job], only: Sequence[str], with_resnet: bool) -> list[Job]:
    """``jobs`` whose name contains one of ``only`` (all when empty), the resnet's only if
    ``with_resnet``."""
    return [job for job in jobs if (with_resnet or job.model != "resnet")
            and (not only or any(text in job.name for text in only))]


# --------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class ModelFiles:
    """A model to correct: its checkpoint and architecture, and the folder of its three splits
    (``train``/``audit``/``eval.safetensors``, whose ``reference_logits`` are this model's)."""

    model: Path
    arch: Path
    data: Path


def _eval_facts(model: torch.nn.Module, eval_path: Path) -> dict[str, float]:
    """Eval accuracy and DP difference (red − green) of ``model``'s hard predictions."""
    data = load_arrays(str(eval_path))
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["x"])).reshape(-1).numpy() > 0
    red = data["colour"] == 1
    return {"accuracy": float(np.mean(predicted == (data["y"] == 1))),
            "demographic_parity_difference": float(predicted[red].mean() - predicted[~red].mean())}


def _copy_with_logits(source: Path, target: Path, model: torch.nn.Module) -> None:
    """The tensor dataset ``source`` with its reference logits replaced by ``model``'s."""
    with safe_open(str(source), framework="numpy") as handle:
        metadata = handle.metadata()
    arrays = load_arrays(str(source))
    with torch.no_grad():
        logits = model(torch.from_numpy(arrays["x"])).reshape(-1).double().numpy()
    save_arrays(arrays | {REFERENCE_COLUMN: np.ascontiguousarray(logits)}, str(target), metadata=metadata)


def train_resnet(example: Path, root: Path, seed: int) -> tuple[ModelFiles, dict[str, Any]]:
    """Train :data:`RESNET_ARCH` on the example's train split (seeded) and write its checkpoint (the
    network's own state-dict keys), its architecture and the three splits with its reference logits
    (so that the CLI checks that it rebuilds this model); returns the files and the training facts."""
    arch = parse_arch(RESNET_ARCH)
    train = load_arrays(str(example / "train.safetensors"))
    started = time.perf_counter()
    model = train_mlp(arch, train["x"], train["y"].astype(np.float64), seed=seed, epochs=RESNET_EPOCHS,
                      batch_size=RESNET_BATCH_SIZE, lr=RESNET_LR, weight_decay=RESNET_WEIGHT_DECAY)
    seconds = time.perf_counter() - started
    files = ModelFiles(root / "resnet" / "model.safetensors", root / "resnet" / "arch.json", root / "resnet")
    files.data.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(files.model))
    files.arch.write_text(json.dumps(RESNET_ARCH) + "\n", encoding="utf-8")
    for split in SPLITS:
        _copy_with_logits(example / f"{split}.safetensors", files.data / f"{split}.safetensors", model)
    training = {"optimizer": "Adam", "epochs": RESNET_EPOCHS, "batch_size": RESNET_BATCH_SIZE,
                "lr": RESNET_LR, "weight_decay": RESNET_WEIGHT_DECAY, "seed": seed, "seconds": seconds,
                "threads": torch.get_num_threads()}
    facts = {"architecture": RESNET_ARCH, "training": training, "train_seconds": seconds,
             "parameters": sum(p.numel() for p in model.parameters()),
             "eval": _eval_facts(model, example / "eval.safetensors")}
    return files, facts


def _build_example(root: Path, seed: int, threads: int) -> tuple[ExampleInfo, float]:
    """``softunlearn example colored-mnist`` in-process, its cnn trained on ``threads`` torch
    threads (the trained weights depend on the thread count); returns the info and seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        info = build_example(EXAMPLE, root / EXAMPLE, seed=seed, overwrite=True)
        return info, time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)


def build_models(root: Path, seed: int, build_threads: int, with_resnet: bool, say: Say,
                 ) -> tuple[Path, dict[str, ModelFiles], dict[str, Any]]:
    """The example's folder (schema and spec), each model's files, and facts about building them."""
    info, seconds = _build_example(root, seed, build_threads)
    example = info.out_dir
    facts: dict[str, Any] = {"example_seconds": seconds, "cnn_build_threads": build_threads,
                             "cnn_train_seconds": info.train_seconds, "cnn_eval_accuracy": info.eval_accuracy}
    say(f"{EXAMPLE}: built in {seconds:.1f} s on {build_threads} thread(s) "
        f"(cnn eval accuracy {info.eval_accuracy:.3f})")
    models = {"cnn": ModelFiles(example / "model.safetensors", example / "arch.json", example)}
    if with_resnet:
        models["resnet"], facts["resnet"] = train_resnet(example, root, seed)
        say(f"resnet: trained in {facts['resnet']['train_seconds']:.1f} s, eval accuracy "
            f"{facts['resnet']['eval']['accuracy']:.3f}")
    return example, models, facts


# --------------------------------------------------------------------------- one row


def write_spec(job: Job, example: Path, path: Path) -> Path:
    """The spec file of ``job``: the example's ``spec.json`` as it is, or, where the row sets
    ``influence.chunk_size``, a copy with it written to ``path``."""
    source = example / "spec.json"
    if job.chunk_size is None:
        return source
    spec = json.loads(source.read_text(encoding="utf-8"))
    spec.setdefault("influence", {})["chunk_size"] = job.chunk_size
    path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return path


def cli_command(job: Job, example: Path, model: ModelFiles, out: Path, threads: int,
                spec: Path | None = None) -> list[str]:
    """``softunlearn correct`` for ``job`` on the model's splits with the example's schema and
    ``spec`` (default: the example's suggested ``spec.json``; robust evaluation off), the row's
    objective, scheme, method, scope and solver (with progress on stderr)."""
    files = ["--model", str(model.model), "--arch", str(model.arch)]
    for split in SPLITS:
        files += [f"--{split}", str(model.data / f"{split}.safetensors")]
    solver = ["--solver", job.solver] if job.solver else []
    return [sys.executable, "-m", "workers.cli.main", "correct", *files,
            "--schema", str(example / "schema.json"), "--spec", str(spec or example / "spec.json"),
            "--objective", job.objective, "--scheme", job.scheme, "--method", job.method,
            "--scope", job.scope, *solver, "--no-robust-eval", "--device", "cpu", "--threads", str(threads),
            "--out", str(out)]


def relative_cut(before: dict[str, float], after: dict[str, float], objective: str) -> float | None:
    """1 − |after| / |before| of the objective's eval metric (None where either is missing or 0)."""
    metric = headline_metric(objective)
    if before.get(metric) is None or after.get(metric) is None or before[metric] == 0:
        return None
    return 1.0 - abs(after[metric]) / abs(before[metric])


def _read_report(outcome: Outcome, report: dict[str, Any]) -> None:
    """Fill ``outcome`` from ``report``."""
    outcome.before = {k: report["before"]["eval"].get(k) for k in METRICS}
    outcome.after = {k: report["after"]["eval"].get(k) for k in METRICS}
    outcome.cut = relative_cut(outcome.before, outcome.after, outcome.job.objective)
    outcome.target_met = report.get("target_met")
    tracking = report.get("tracking", {})
    outcome.accepted_steps = tracking.get("accepted_steps")
    outcome.undone = len(tracking.get("undone", []))
    outcome.stopped_because = str(tracking.get("stopped_because", ""))
    outcome.warnings = [w.get("code", "") for w in report.get("warnings", [])]
    outcome.timings = dict(report.get("timings", {}))
    outcome.solve_notes = [str(n) for n in report.get("notes") or [] if str(n).startswith(SOLVE_NOTE)]


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, bool]:
    """Poll until ``proc`` exits, killing it after ``timeout`` s: its exit code, its peak RSS in
    bytes (``ru_maxrss`` from ``wait4``) and whether it was killed."""
    started, killed = time.perf_counter(), False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss * 1024, killed
        if not killed and time.perf_counter() - started > timeout:
            proc.kill()
            killed = True
        time.sleep(POLL_SECONDS)


def run_job(job: Job, example: Path, model: ModelFiles, work: Path, threads: int,
            timeout: float) -> Outcome:
    """Run the CLI for ``job`` as a subprocess (its stderr, with the progress lines, kept in
    ``work/<row>.log``, its spec, if its own, in ``work/<row>.spec.json``) and read its report."""
    out, log = work / job.name, work / f"{job.name}.log"
    shutil.rmtree(out, ignore_errors=True)
    spec = write_spec(job, example, work / f"{job.name}.spec.json")
    command = cli_command(job, example, model, out, threads, spec)
    started = time.perf_counter()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        returncode, peak, killed = _wait(proc, timeout)
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-12:]
    if killed:
        tail.append(f"killed after {timeout:.0f} s")
    outcome = Outcome(job, returncode, time.perf_counter() - started, peak, stderr_tail=tail)
    report = out / "report.json"
    if report.exists():
        _read_report(outcome, json.loads(report.read_text(encoding="utf-8")))
    shutil.rmtree(out, ignore_errors=True)
    return outcome


# --------------------------------------------------------------------------- output


UNDONE = re.compile(r"^(iteration \d+|the method's step) was undone at every step length: (.*)$")
SHORTER = (
    (re.compile(r"audit log-loss would rise from ([\d.]+) to ([\d.]+) \(allowed ([\d.]+)"),
     "audit log-loss {1} → {2} > {3}"),
    (re.compile(r"realized a target reduction of ([\d.]+) against ([\d.]+) predicted \(less than "
                r"guard.min_progress_ratio = ([\d.]+)"), "realized {1} of {2} predicted (< {3}×)"),
)
"""The guard's two usual reasons for undoing a step, as short phrases (``{i}``: the i-th group)."""


def shorten(reason: str, width: int = 60) -> str:
    """``stopped_because`` for the table: an undone step as "who undone: why" in a few words,
    anything else cut to ``width`` characters (the JSON keeps it whole)."""
    reason = " ".join(reason.split())
    undone = UNDONE.match(reason)
    if undone:
        who = "method step" if undone.group(1).startswith("the") else undone.group(1)
        for pattern, phrase in SHORTER:
            found = pattern.search(undone.group(2))
            if found:
                return f"{who} undone: " + phrase.format(None, *found.groups())
    return reason if len(reason) <= width else reason[:width - 1] + "…"


def _pair(before: float | None, after: float | None) -> str:
    """``before → after`` with three decimals."""
    if before is None or after is None:
        return ""
    return f"{before:.3f} → {after:.3f}"


def _status(outcome: Outcome) -> str:
    """Exit code and what it means (0 target met, 3 missed, anything else failed)."""
    meaning = {0: "met", 3: "missed"}.get(outcome.returncode, "failed")
    return f"{outcome.returncode} ({meaning})"


def _cells(outcome: Outcome) -> list[str]:
    """One table line's cells."""
    job, b, a = outcome.job, outcome.before, outcome.after
    cut = "" if outcome.cut is None else f"{outcome.cut:.1%}" + (" ✓" if outcome.works else "")
    steps = "" if outcome.accepted_steps is None else f"{outcome.accepted_steps} ({outcome.undone})"
    reason = outcome.stopped_because if outcome.timings else " ".join(outcome.stderr_tail[-1:])
    total = f"{outcome.timings['total']:.1f}" if "total" in outcome.timings else ""
    scope = f"{job.scope} ({job.solver})" if job.solver else job.scope
    return [job.model, scope, job.method, job.scheme, job.objective, _status(outcome),
            str(outcome.target_met) if outcome.target_met is not None else "",
            *(_pair(b.get(k), a.get(k)) for k in METRICS), cut, steps, shorten(reason),
            f"{outcome.wall_seconds:.1f}", total, f"{outcome.peak_rss_bytes / 2**30:.2f}"]


def markdown_outcomes(outcomes: Sequence[Outcome]) -> str:
    """One line per row; ✓ marks a cut of the targeted gap ≥ 40 % at ≤ 2 pp accuracy loss."""
    head = ["model", "scope (solver)", "method", "scheme", "objective", "exit", "target_met", "eval accuracy",
            "eval DP diff", "eval EO diff", "cut of targeted gap", "steps (undone)", "stopped because",
            "wall s", "report total s", "peak RSS GiB"]
    align = "|" + "---|" * 5 + "---:|---|---|---|---|---:|---:|---|---:|---:|---:|"
    lines = ["| " + " | ".join(head) + " |", align]
    lines += ["| " + " | ".join(_cells(o)) + " |" for o in outcomes]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.image_example",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the full-scope rows (minutes each)")
    parser.add_argument("--no-resnet", action="store_true",
                        help="leave out the resnet rows (and its training)")
    parser.add_argument("--resnet-full", nargs="+", default=[], choices=FULL_SOLVERS, metavar="SOLVER",
                        help="also the resnet at scope full with newton, once per solver and scheme "
                             f"(one of {', '.join(FULL_SOLVERS)}; not with --quick)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the rows whose name contains TEXT (repeatable), e.g. resnet-full-cg")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the CLI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example and the resnet")
    parser.add_argument("--build-threads", type=int, default=None,
                        help="torch threads for training the example's cnn (default: torch's default, "
                             "as `softunlearn example` uses; the cnn's weights depend on it)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the example and the outputs go, kept afterwards (default: a "
                             "temporary directory under /tmp, deleted at the end)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _measure(args: argparse.Namespace, work: Path, say: Say) -> tuple[dict[str, Any], list[Outcome]]:
    """Build the models under ``work``, then run every planned row in turn."""
    jobs = select(plan(args.quick, args.resnet_full), args.only, not args.no_resnet)
    if not jobs:
        raise SystemExit("no rows left to run (see --only, --quick, --no-resnet)")
    with_resnet = any(job.model == "resnet" for job in jobs)
    build_threads = args.build_threads or DEFAULT_THREADS
    example, models, facts = build_models(work, args.seed, build_threads, with_resnet, say)
    placeholder = ModelFiles(Path("MODEL"), Path("ARCH"), Path("DATA"))
    command = cli_command(jobs[0], Path("EXAMPLE"), placeholder, Path("OUT"), args.threads)
    facts["command"] = " ".join(command[1:])
    outcomes = []
    for job in jobs:
        outcomes.append(run_job(job, example, models[job.model], work, args.threads, args.timeout))
        say(f"{job.name}: {_status(outcomes[-1])}, {outcomes[-1].wall_seconds:.1f} s, "
            f"peak RSS {outcomes[-1].peak_rss_bytes / 2**30:.2f} GiB")
    return facts, outcomes


def _write(out: Path, payload: dict[str, Any]) -> Path:
    return write_results(out, "image-example-quick" if payload["quick"] else "image-example", payload)


def main(argv: list[str] | None = None) -> int:
    """Run every row, print the tables, write the JSON; returns 0."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    say: Say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    machine, started = machine_facts(), time.perf_counter()
    if args.work is not None:
        facts, outcomes = _measure(args, args.work, say)
    else:
        with tempfile.TemporaryDirectory(prefix="img-bench-") as tmp:
            facts, outcomes = _measure(args, Path(tmp), say)
    machine["load_average_at_end"] = list(os.getloadavg())
    tables = {"rows": markdown_outcomes(outcomes),
              "timings": markdown_timings({o.job.name: o.timings for o in outcomes if o.timings})}
    payload = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": args.quick,
               "machine": machine, "settings": {k: str(v) if isinstance(v, Path) else v
                                                for k, v in vars(args).items()},
               "wall_seconds": time.perf_counter() - started, "facts": facts,
               "rows": [asdict(o) | {"name": o.job.name, "works": o.works} for o in outcomes],
               "markdown": tables}
    path = _write(args.out, payload)
    print(f"## {EXAMPLE}: eval split, before → after (robust evaluation off, {args.threads} thread(s))\n")
    print(tables["rows"])
    print("### Per-stage seconds (report timings)\n")
    print(tables["timings"])
    loads = "/".join(f"{v:.2f}" for v in (*machine["load_average_at_start"], *machine["load_average_at_end"]))
    print(f"{machine['nproc']} cores, {machine['ram_bytes'] / 1024**3:.1f} GiB RAM, "
          f"torch {machine['torch']}; "
          f"load average (1/5/15 min) start/end {loads}; total {payload['wall_seconds']:.0f} s; "
          f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
