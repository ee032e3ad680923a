"""Full-network influence (``influence.scope = 'full'``) on Adult at growing MLP sizes, per solver.

``python -m benchmarks.full_scope --threads 1`` (or ``python -m benchmarks.run --tables full_scope``)
builds the Adult example once, trains MLPs of about 1.7 k, 8.8 k (the example's own [64, 32]),
92 k and 1 M parameters on its training split, then for each model and solver runs

- the **job**: the default demographic-parity correction with ``scope: full`` through the public
  pipeline (``run_correction``, robust evaluation off), in a fresh process so its peak RSS is its
  own; wall time, CPU time (on one thread, what the wall time would be on an idle core: read it
  when the machine is loaded), stage timings and peak RSS (``ru_maxrss``);
- the **scores**: the utility influences ``gᵢᵀ(G + μI)⁻¹∇f`` (f = mean audit log-loss) of every
  training row, whose Spearman rank agreement with the reference solver (exact where it runs,
  else CG) is printed;
- the **peer** (``--peer``): dattri's ``IFAttributorCG`` on the same model, the same first
  ``PEER_ROWS`` training rows, system ``(H + (δ + λ)I)`` (exact sum-form Hessian, the same shift)
  and target, against ours with ``solver: cg, curvature: hessian``: time ratio, Spearman and
  Pearson. dattri's CG runs a fixed ``max_iter`` (it has no stopping rule), so it gets the fewest
  iterations reaching our ``cg_tolerance``, found with its own solver outside the timing
  (:func:`_peer_iterations`).

A run that cannot finish within ``--timeout`` seconds is reported as such. The figures measured
from outside before this change (issue 12) are printed beside the new ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODELS", "PREVIOUS", "main", "markdown", "run_benchmark"]

MODELS: dict[str, tuple[int, ...]] = {"1.7k": (16,), "8.8k": (64, 32), "92k": (256, 256), "1M": (960, 960)}
"""Hidden widths of the MLPs (Adult has 103 model features; parameter counts rounded)."""
SOLVERS = ("auto", "exact", "cg", "lissa", "ekfac")
"""``auto`` (the default spec's choice, run on every model it is asked for) and the named solvers."""
FEASIBLE: dict[str, tuple[str, ...]] = {"1.7k": ("exact", "cg", "ekfac"), "8.8k": ("cg", "lissa", "ekfac"),
                                        "92k": ("cg", "ekfac"), "1M": ("ekfac",)}
"""Solvers run by default per model: exact needs a dense P × P matrix (8.8 k: ≈ 0.6 GB and ~10¹³
flops to build and factor, so it is left out beyond 5 k parameters); CG and LiSSA need hundreds
of passes over the data per solve (see docs/ENGINE.md for where each stops being sensible)."""
PREVIOUS = {("8.8k", "cg"): "100–180 s", ("92k", "cg"): "refused (needs 17 GB)",
            ("1M", "cg"): "not finished in 25 min"}
"""Measured from outside before per-sample products went forward-mode (issue 12, item 5)."""
EPOCHS = 4
PEER_ROWS = 4000
"""Training rows of the peer comparison (both libraries, the same rows): dattri's CG holds the
whole training set's reverse-over-reverse graph in one batch, which on all 30 k rows went past
the machine's memory."""
PEER_DAMPING_PER_ROW = 0.05
"""Damping per training row of the exact-Hessian solves compared with the peer library."""
GIB = 2**30


@dataclass(frozen=True)
class Job:
    """One (model, solver) measurement."""

    model: str
    solver: str


def _train_models(work: Path, models: list[str], seed: int) -> dict[str, int]:
    """Train each MLP on the example's training split; write arch.json and model.safetensors
    under ``work/models/<name>``. Returns the parameter counts."""
    from safetensors.torch import save_file

    from workers.engine.examples.tabular import SETTINGS
    from workers.engine.io.architecture import ArchSpec
    from workers.engine.models.training import train_mlp

    inputs = _example_inputs(work)
    counts = {}
    settings = SETTINGS["adult"]
    for name in models:
        target = work / "models" / name
        target.mkdir(parents=True, exist_ok=True)
        arch = ArchSpec(inputs.arch.in_features, MODELS[name])
        if (target / "model.safetensors").exists():  # a --work directory reused: same seed, same model
            from safetensors.torch import load_file
            counts[name] = sum(v.numel() for v in load_file(str(target / "model.safetensors")).values())
            continue
        network = train_mlp(arch, np.asarray(inputs.train.features, dtype=np.float32), inputs.train.labels,
                            seed=seed, epochs=EPOCHS, batch_size=settings.batch_size, lr=settings.lr,
                            weight_decay=settings.weight_decay)
        state = arch.to_external({k: v.contiguous() for k, v in network.state_dict().items()})
        save_file(state, str(target / "model.safetensors"))
        (target / "hidden.json").write_text(json.dumps(list(MODELS[name])))
        counts[name] = sum(p.numel() for p in network.parameters())
    return counts


def _example_inputs(work: Path, hidden: tuple[int, ...] | None = None) -> Any:
    """The Adult example's inputs under ``work/adult``, with the MLP of ``hidden`` when given."""
    import dataclasses

    from safetensors.torch import load_file

    from workers.engine.io.architecture import ArchSpec, load_arch
    from workers.engine.io.datasets import load_schema
    from workers.engine.pipeline import load_inputs

    root = work / "adult"
    schema = load_schema(root / "schema.json")
    inputs = load_inputs(root / "model.safetensors", load_arch(root / "arch.json"),
                         (root / "train.parquet", schema), (root / "audit.parquet", schema),
                         (root / "eval.parquet", schema), "sex")
    if hidden is None:
        return inputs
    name = next(k for k, v in MODELS.items() if v == hidden)
    state = load_file(str(work / "models" / name / "model.safetensors"))

    def without_reference(data: Any) -> Any:  # the example's logits are its own baseline's
        return None if data is None else dataclasses.replace(data, reference_logits=None,
                                                             reference_column=None)
    return dataclasses.replace(inputs, arch=ArchSpec(inputs.arch.in_features, hidden), state=state,
                               train=without_reference(inputs.train), audit=without_reference(inputs.audit),
                               eval=without_reference(inputs.eval))


def _run_job(work: Path, job: Job, seed: int) -> dict[str, Any]:
    """The correction job, timed (runs in the child process)."""
    from workers.engine.config import spec_from_dict
    from workers.engine.pipeline import run_correction

    inputs = _example_inputs(work, MODELS[job.model])
    spec = spec_from_dict({"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex"},
                           "evaluation": {"robustness": False}, "seed": seed,
                           "influence": _influence_settings(job.solver, **_chunking(job.model))})
    started, cpu = time.perf_counter(), time.process_time()
    report = run_correction(inputs, spec, device="cpu").report
    return {"job_seconds": time.perf_counter() - started, "job_cpu_seconds": time.process_time() - cpu,
            "timings": report["timings"], **_solver_chosen(report),
            "eval_dp_before": report["before"]["eval"].get("demographic_parity_difference"),
            "eval_dp_after": report["after"]["eval"].get("demographic_parity_difference"),
            "eval_accuracy_before": report["before"]["eval"].get("accuracy"),
            "eval_accuracy_after": report["after"]["eval"].get("accuracy")}


def _solver_chosen(report: dict[str, Any]) -> dict[str, Any]:
    """The solver the job's first iteration used and why (what ``auto`` resolved to)."""
    iterations = report.get("predicted", {}).get("iterations") or [{}]
    solver = iterations[0].get("solver") or {}
    return {"solver_chosen": solver.get("solver"), "solver_reason": solver.get("solver_reason")}


def _chunking(model: str) -> dict[str, Any]:
    """A smaller chunk of rows for the wide MLPs, so a chunk's activations (and their copies in
    the batched products) stay well inside the 4 GB target."""
    return {"chunk_size": 2048} if model in ("92k", "1M") else {}


def _influence_settings(solver: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"scope": "full", "solver": solver, **extra}
    if solver == "exact":
        settings["exact_max_parameters"] = 50_000
    return settings


def _scores(work: Path, job: Job, out: Path, curvature: str = "gauss_newton") -> dict[str, Any]:
    """Utility influences of every training row by ``job.solver``, saved to ``out`` (child).

    With the exact Hessian (the peer comparison) the damping is ``PEER_DAMPING_PER_ROW`` per row:
    a trained ReLU MLP's Hessian has negative eigenvalues that the default (1e-3 per row) does
    not lift, and CG refuses them.
    """
    import torch
    from torch.nn import functional as F

    from workers.engine.config import InfluenceConfig
    from workers.engine.influence.full import FullInfluence, objective_gradient
    from workers.engine.models.head_model import HeadModel

    inputs = _example_inputs(work, MODELS[job.model])
    model = HeadModel.from_state(inputs.arch, inputs.state, torch.device("cpu"))
    rows = slice(0, PEER_ROWS if curvature == "hessian" else None)
    labels = torch.from_numpy(np.asarray(inputs.train.labels, dtype=np.float64)[rows])
    extra: dict[str, Any] = {"curvature": curvature, **_chunking(job.model)}
    if curvature == "hessian":
        extra["damping"] = PEER_DAMPING_PER_ROW * len(labels)
    config = InfluenceConfig(**_influence_settings(job.solver, **extra))
    started, cpu = time.perf_counter(), time.process_time()
    engine = FullInfluence(model.network, torch.from_numpy(np.asarray(inputs.train.features)[rows]), labels,
                           torch.ones_like(labels), config)
    audit = torch.from_numpy(np.asarray(inputs.audit.features, dtype=np.float64))
    audit_labels = torch.from_numpy(np.asarray(inputs.audit.labels, dtype=np.float64))
    gradient = objective_gradient(engine.to_network(), lambda net: F.binary_cross_entropy_with_logits(
        net(audit).reshape(-1), audit_labels))
    direction, info = engine.solve(gradient, "influence", check_residual=False)
    values = engine.per_sample_dot(direction).numpy()
    np.save(out, values)
    return {"score_seconds": time.perf_counter() - started, "score_cpu_seconds": time.process_time() - cpu,
            "damping": engine.damping, "l2_reg": engine.l2_reg, "iterations": info.get("iterations"),
            "rows": len(labels)}


def _peer_task(network: Any) -> Any:
    """dattri's ``AttributionTask`` for the summed training log-loss of ``network`` (float64)."""
    import torch
    from dattri.task import AttributionTask
    from torch.nn import functional as F

    def loss(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        logits = torch.func.functional_call(network, params, (x,)).reshape(-1)
        return F.binary_cross_entropy_with_logits(logits, y.reshape(-1), reduction="sum")

    return AttributionTask(loss_func=loss, model=network, checkpoints=network.state_dict())


PEER_MAX_ITERATIONS = 2**12
"""Most CG iterations tried for dattri (ours stops at ``cg_max_iterations`` = 2000)."""


def _peer_iterations(task: Any, train: tuple[Any, Any], audit: tuple[Any, Any], shift: float,
                     tolerance: float) -> tuple[int, float]:
    """The fewest CG iterations with which dattri's own ``ihvp_at_x_cg`` solves
    ``(H + shift·I) x = ∇f`` to ``‖(H + shift·I)x − ∇f‖ ≤ tolerance·‖∇f‖``, and that residual.

    dattri's CG has no stopping rule (its ``tol`` is unused) and runs exactly ``max_iter``
    iterations; past convergence its recursive residual keeps shrinking until it underflows to 0
    and ``β = 0/0`` turns the solution, hence every score, into NaN (after ≈ 430 iterations on the
    1.7 k model, so ``max_iter=2000`` gave 4,000 NaN). Ours stops at the first iterate within
    ``tolerance``; this gives dattri the same: doubling, then bisection, each trial one solve,
    its residual measured with dattri's ``hvp_at_x`` (all outside the timing). The count found is
    far below the underflow (that needs ~300/4 times as many iterations as reaching 1e-4).
    """
    import torch
    from dattri.func.hessian import hvp_at_x, ihvp_at_x_cg

    params, _ = task.get_param(0)
    loss: Callable[[torch.Tensor, tuple[Any, Any]], torch.Tensor] = task.get_loss_func()

    def summed(p: torch.Tensor) -> torch.Tensor:
        return loss(p, train)

    target = torch.func.grad(lambda p: loss(p, audit))(params)
    product = hvp_at_x(summed, (params,), mode="rev-fwd", regularization=shift)

    def residual(iterations: int) -> float:
        solution = ihvp_at_x_cg(summed, params, max_iter=iterations, mode="rev-fwd",
                                regularization=shift)(target).reshape(-1)
        return float((product(solution) - target).norm() / target.norm())

    high = 1
    while not residual(high) <= tolerance:  # NaN counts as not converged
        if high >= PEER_MAX_ITERATIONS:
            raise RuntimeError(f"dattri's CG did not reach relative residual {tolerance:g} in "
                               f"{PEER_MAX_ITERATIONS} iterations")
        high *= 2
    low = high // 2  # not converged (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if residual(middle) <= tolerance else (middle, high)
    return high, residual(high)


def _peer_scores(work: Path, model_name: str, out: Path, shift: float) -> dict[str, Any]:
    """dattri's CG influence of the mean audit log-loss on the same model, rows, system
    ``(H + shift·I)`` and stopping accuracy (our ``cg_tolerance``) as ours (child)."""
    import torch
    from dattri.algorithm.influence_function import IFAttributorCG
    from torch.utils.data import DataLoader, TensorDataset

    from workers.engine.config import InfluenceConfig
    from workers.engine.models.head_model import HeadModel

    inputs = _example_inputs(work, MODELS[model_name])
    network = HeadModel.from_state(inputs.arch, inputs.state, torch.device("cpu")).network.double()
    network.requires_grad_(True)
    features = torch.from_numpy(np.asarray(inputs.train.features, dtype=np.float64)[:PEER_ROWS])
    labels = torch.from_numpy(np.asarray(inputs.train.labels, dtype=np.float64)[:PEER_ROWS])
    audit = torch.from_numpy(np.asarray(inputs.audit.features, dtype=np.float64))
    audit_labels = torch.from_numpy(np.asarray(inputs.audit.labels, dtype=np.float64))
    tolerance = InfluenceConfig().cg_tolerance
    calibrating = time.perf_counter()
    iterations, residual = _peer_iterations(_peer_task(network), (features, labels), (audit, audit_labels),
                                            shift, tolerance)
    calibration = time.perf_counter() - calibrating

    started, cpu = time.perf_counter(), time.process_time()
    attributor = IFAttributorCG(task=_peer_task(network), device="cpu", max_iter=iterations, mode="rev-fwd",
                                regularization=shift)
    # One batch holds the whole training set: dattri sums per-batch inverse products.
    attributor.cache(DataLoader(TensorDataset(features, labels), batch_size=len(labels)))
    # The mean audit log-loss is linear in the per-row test gradients: one test "row" whose
    # loss is the audit sum gives the same representation as summing n_audit columns.
    summed = attributor.attribute(DataLoader(TensorDataset(features, labels), batch_size=4096),
                                  DataLoader(TensorDataset(audit.unsqueeze(0), audit_labels.unsqueeze(0)),
                                             batch_size=1))
    values = summed[:, 0].detach().double().numpy() / len(audit_labels)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    if not np.isfinite(values).all():
        raise RuntimeError(f"dattri returned {int((~np.isfinite(values)).sum())} non-finite scores")
    np.save(out, values)
    return {"score_seconds": seconds, "score_cpu_seconds": cpu_seconds, "iterations": iterations,
            "relative_residual": residual, "calibration_seconds": calibration, "shift": shift,
            "rows": len(labels)}


def _child(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads or 1))
    job = Job(args.model, args.solver)
    out = Path(args.scores)
    if args.what == "job":
        result = _run_job(args.work, job, args.seed)
    elif args.what == "scores":
        result = _scores(args.work, job, out)
    elif args.what == "scores_hessian":
        result = _scores(args.work, job, out, curvature="hessian")
    else:
        result = _peer_scores(args.work, job.model, out, float(args.shift))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print("RESULT " + json.dumps(result, default=float))
    return 0


def _spawn(what: str, work: Path, job: Job, args: argparse.Namespace, scores: Path, shift: float = 0.0,
           ) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.full_scope", "--child", what, "--work", str(work),
               "--model", job.model, "--solver", job.solver, "--scores", str(scores),
               "--seed", str(args.seed), "--threads", str(args.threads or 1), "--shift", repr(shift)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish in {args.timeout:.0f} s"}
    wall = time.perf_counter() - started
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"status": "ok", "process_seconds": wall, **json.loads(line[len("RESULT "):])}
    tail = " ".join((done.stderr or done.stdout).split())[-200:]
    return {"status": f"failed: {tail}"}


def _spearman(a: Path, b: Path) -> float | None:
    """Spearman rank correlation of two saved score vectors (None when either is missing)."""
    from scipy.stats import spearmanr

    if not (a.exists() and b.exists()):
        return None
    return float(spearmanr(np.load(a), np.load(b)).statistic)


def _pearson(a: Path, b: Path) -> float | None:
    """Pearson correlation of two saved score vectors (None when either is missing)."""
    from scipy.stats import pearsonr

    if not (a.exists() and b.exists()):
        return None
    return float(pearsonr(np.load(a), np.load(b)).statistic)


def run_benchmark(args: argparse.Namespace, work: Path, say: Any) -> dict[str, Any]:
    """Build, train, measure; returns the results (rows and the machine's load)."""
    from workers.engine.examples.builder import build_example

    load_start = list(os.getloadavg())
    if not (work / "adult" / "model.safetensors").exists():
        say("building the Adult example")
        build_example("adult", work / "adult", seed=args.seed, overwrite=True)
    say(f"training the MLPs {args.models}")
    counts = _train_models(work, args.models, args.seed)
    rows: list[dict[str, Any]] = []
    for model in args.models:
        solvers = ([s for s in args.solvers if s == "auto" or s in FEASIBLE[model]] if not args.all_solvers
                   else args.solvers)
        reference = None
        for solver in solvers:
            job = Job(model, solver)
            scores = work / f"scores-{model}-{solver}.npy"
            say(f"[{model}] {solver}: job")
            row: dict[str, Any] = {"model": model, "parameters": counts[model], "solver": solver,
                                   "previous": PREVIOUS.get((model, solver), "")}
            row["job"] = _spawn("job", work, job, args, scores)
            say(f"[{model}] {solver}: {row['job']['status']}; scores")
            finished = not row["job"]["status"].startswith("did not finish")
            row["scores"] = (_spawn("scores", work, job, args, scores) if finished
                             else {"status": "skipped (the job did not finish)"})
            if reference is None and row["scores"]["status"] == "ok":
                reference = scores
            row["reference"] = reference.name if reference is not None else None
            row["spearman_vs_reference"] = _spearman(scores, reference) if reference is not None else None
            rows.append(row)
            say("row " + json.dumps(row, default=float))
    peers = []
    if args.peer:
        for model in args.peer_models:
            ours = work / f"scores-{model}-cg-hessian.npy"
            theirs = work / f"scores-{model}-dattri.npy"
            for stale in (ours, theirs):  # a reused --work directory: never compare old scores
                stale.unlink(missing_ok=True)
            say(f"[{model}] peer: ours (cg, exact Hessian)")
            mine = _spawn("scores_hessian", work, Job(model, "cg"), args, ours)
            shift = float(mine.get("damping", 0.0)) + float(mine.get("l2_reg", 0.0))
            say(f"[{model}] peer: dattri IFAttributorCG")
            peer = (_spawn("peer", work, Job(model, "cg"), args, theirs, shift) if mine["status"] == "ok"
                    else {"status": "skipped (ours did not finish)"})
            ratio = (peer["score_seconds"] / mine["score_seconds"]
                     if peer["status"] == "ok" and mine["status"] == "ok" else None)
            say("peer " + json.dumps({"ours": mine, "dattri": peer}, default=float))
            peers.append({"model": model, "parameters": counts.get(model), "ours": mine, "dattri": peer,
                          "time_ratio_dattri_over_ours": ratio, "spearman": _spearman(ours, theirs),
                          "pearson": _pearson(ours, theirs)})
    return {"rows": rows, "peers": peers, "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()), "cpu_count": os.cpu_count(),
            "threads": args.threads}


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def _outcome(run: dict[str, Any]) -> str:
    if run["status"] != "ok":
        return str(run["status"])
    return f"{_seconds(run.get('score_seconds'))} ({_seconds(run.get('score_cpu_seconds'))})"


def _ratio(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def _peer_table(peers: list[dict[str, Any]]) -> list[str]:
    """The peer comparison: same model, rows, damped system and target on both sides."""
    lines = ["| model | params | rows | shift δ + λ | ours: cg, exact Hessian, s (iterations) "
             "| dattri IFAttributorCG, s (max_iter, residual) | time ratio dattri/ours | Spearman "
             "| Pearson |", "|---|---|---|---|---|---|---|---|---|"]
    for peer in peers:
        ours, theirs = peer["ours"], peer["dattri"]
        mine = (f"{_outcome(ours)} ({ours.get('iterations', '–')})" if ours["status"] == "ok"
                else _outcome(ours))
        peer_cg = (f"{_outcome(theirs)} ({theirs['iterations']}, {theirs['relative_residual']:.1e})"
                   if theirs["status"] == "ok" else _outcome(theirs))
        shift = (float(ours["damping"]) + float(ours["l2_reg"])) if ours["status"] == "ok" else None
        lines.append(f"| {peer['model']} | {peer['parameters']:,} | {ours.get('rows', '–')} "
                     f"| {_ratio(shift, 1)} | {mine} | {peer_cg} "
                     f"| {_ratio(peer['time_ratio_dattri_over_ours'], 2)} | {_ratio(peer['spearman'], 4)} "
                     f"| {_ratio(peer.get('pearson'), 4)} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The tables: jobs per model and solver, then the peer comparison."""
    lines = ["| model | params | solver | job wall (CPU) s | influence / frontier / unlearn (s) "
             "| peak RSS (GiB) | scores wall (CPU) s | Spearman vs ref | eval DP before → after "
             "| previous (issue 12) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        job, scores = row["job"], row["scores"]
        if job["status"] == "ok":
            t = job["timings"]
            stages = " / ".join(_seconds(t.get(k)) for k in ("influence", "frontier", "unlearn"))
            dp = f"{job['eval_dp_before']:.3f} → {job['eval_dp_after']:.3f}"
            wall = f"{_seconds(job['job_seconds'])} ({_seconds(job.get('job_cpu_seconds'))})"
            rss = f"{job['peak_rss_gib']:.2f}"
        else:
            stages, dp, wall, rss = job["status"], "", "–", "–"
        rho = row["spearman_vs_reference"]
        against = str(row["reference"]).split("-")[-1].removesuffix(".npy")
        ref = f"{rho:.3f} ({against})" if rho is not None else "–"
        chosen = job.get("solver_chosen")
        solver = f"{row['solver']} → {chosen}" if row["solver"] == "auto" and chosen else row["solver"]
        lines.append(f"| {row['model']} | {row['parameters']:,} | {solver} | {wall} | {stages} "
                     f"| {rss} | {_outcome(scores)} | {ref} | {dp} | {row['previous']} |")
    if results["peers"]:
        lines += ["", *_peer_table(results["peers"])]
    loads = "/".join(f"{v:.2f}" for v in results["load_average_at_start"])
    ends = "/".join(f"{v:.2f}" for v in results["load_average_at_end"])
    lines.append(f"\n{results['threads']} torch thread(s); {results['cpu_count']} cores; load average "
                 f"(1, 5, 15 min) {loads} at start, {ends} at end")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """Command-line options (also used by ``benchmarks.run --tables full_scope``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.full_scope", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--solvers", nargs="+", choices=SOLVERS, default=[s for s in SOLVERS if s != "auto"],
                   help="default: the named solvers (auto picks one of them)")
    p.add_argument("--all-solvers", action="store_true", help="run every solver on every model "
                   "(default: the feasible ones, FEASIBLE)")
    p.add_argument("--peer", action="store_true", help="compare with dattri (the bench extra)")
    # 1.7 k: at 0.05 per row the 8.8 k MLP's exact Hessian still has negative curvature (CG refuses).
    p.add_argument("--peer-models", nargs="+", choices=list(MODELS), default=["1.7k"])
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--child", choices=("job", "scores", "scores_hessian", "peer"), dest="what",
                   default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="8.8k", help=argparse.SUPPRESS)
    p.add_argument("--solver", default="cg", help=argparse.SUPPRESS)
    p.add_argument("--scores", default="", help=argparse.SUPPRESS)
    p.add_argument("--shift", default="0.0", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one measurement) and print the tables."""
    args = parser().parse_args(argv)
    if args.what is not None:
        return _child(args)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.work is not None:
        results = run_benchmark(args, args.work, say)
    else:
        with tempfile.TemporaryDirectory(prefix="softunlearn-full-") as tmp:
            results = run_benchmark(args, Path(tmp), say)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.out / f"full-scope-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    print("## Full-network influence on Adult (scope full), per model and solver\n")
    print(markdown(results))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
