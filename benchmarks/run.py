"""Run the benchmark: ``python -m benchmarks.run [--datasets adult bank] [--quick] [--tables ...]``.

``--tables full_scope`` adds the full-network influence table (:mod:`benchmarks.full_scope`);
``--tables linear_head_scale`` the 100 k and 1 M × 512 logistic-head runs with their Gram lower
bound (:mod:`benchmarks.linear_head_scale`: ≈ 2.3 GB of data in /tmp, a few minutes).

For each dataset: build the shipped example (baseline MLP), time the default correction stage by
stage, then measure every configuration of :data:`benchmarks.variants.VARIANTS` (of the chosen
tables) on the eval split. ``--tables throughput`` measures jobs/min of real workers
(:mod:`benchmarks.throughput`). Prints markdown tables and writes the full results as JSON under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from benchmarks import full_scope, linear_head_scale
from benchmarks.baselines import BaselineOutcome, fairlearn_dp, logistic_regression, retrain_weighted
from benchmarks.engine_runs import Example, correction_seconds, prepare_example, run_engine
from benchmarks.table import (
    Row,
    mark_pareto,
    markdown_methods,
    markdown_results,
    markdown_robustness,
    markdown_soft_vs_hard,
    markdown_timings,
    row_from_metrics,
)
from benchmarks.throughput import JOBS, run_throughput
from benchmarks.variants import TABLES, Table, Variant, method_available, select
from workers.engine.examples.builder import ExampleName

__all__ = ["main", "run_dataset"]

DATASETS: tuple[ExampleName, ...] = ("adult", "bank")
RESULTS = Path(__file__).resolve().parent / "results"
FULL_SCOPE = "full_scope"
"""The table of benchmarks/full_scope.py, run only when named in ``--tables``."""
LINEAR_HEAD_SCALE = "linear_head_scale"
"""The table of :mod:`benchmarks.linear_head_scale`, run only when named in ``--tables``."""
THROUGHPUT = "throughput"
"""The table of :mod:`benchmarks.throughput` (not one of the engine tables of ``variants``)."""
QUICK_THROUGHPUT_JOBS = 6
Say = Callable[[str], None]


def _engine_row(example: Example, variant: Variant, seed: int) -> Row:
    """A correction through the public pipeline; seconds = load → unlearn."""
    if not method_available(variant.method):
        return Row(example.name, variant.name, variant.family,
                   f"not available (method '{variant.method}' not registered)")
    report = run_engine(example, variant.spec, seed=seed)[0].report
    weights = report["weights"]
    metric_keys = ("accuracy", "demographic_parity_difference", "equalized_odds_difference",
                   "robust_accuracy", "robust_accuracy_frozen")
    details = {
        "spec": {"weighting": report["spec"]["weighting"], "method": report["spec"]["method"]["name"],
                 "reduction": report["spec"]["objective"]["reduction"]},
        "timings": report["timings"],
        "method_seconds": correction_seconds(report["timings"], with_load=False),
        "eval_before": {k: report["before"]["eval"].get(k) for k in metric_keys},
        "audit_target": report["target"],
        "audit_after": {k: report["after"]["audit"].get(k) for k in
                        ("accuracy", "demographic_parity_difference", "equalized_odds_difference")},
        "weights": {k: weights.get(k) for k in ("l2_norm", "min", "max", "removed", "down_weighted",
                                                "up_weighted", "negative_effective_weights",
                                                "predicted_utility_change")},
        "notes": report["notes"],
        "decision": _decision(report),
    }
    return row_from_metrics(example.name, variant.name, variant.family, report["after"]["eval"],
                            correction_seconds(report["timings"]), details)


def _decision(report: dict[str, Any]) -> dict[str, Any]:
    """What the engine decided: ``target_met``, warning codes, the tracking outcome, and the
    paired-bootstrap change (estimate, 95 % interval) of eval accuracy and adaptive robust
    accuracy (``None`` where robust evaluation was off)."""
    confidence = report.get("confidence", {}).get("eval", {})
    tracking = report.get("tracking", {})

    def change(metric: str) -> dict[str, Any] | None:
        entry = confidence.get(metric)
        return dict(entry["change"]) if isinstance(entry, dict) and "change" in entry else None

    return {"target_met": report.get("target_met"),
            "warnings": [w["code"] for w in report.get("warnings", [])],
            "accepted_steps": tracking.get("accepted_steps"),
            "undone": len(tracking.get("undone", [])),
            "stopped_because": tracking.get("stopped_because"),
            "accuracy_change": change("accuracy"),
            "robust_accuracy_change": change("robust_accuracy")}


def _retrain_row(example: Example, variant: Variant, seed: int) -> Row:
    """Weights from an engine correction (all ones without a spec), then the MLP retrained.

    Seconds = the correction that finds the weights (load → unlearn) + training from scratch.
    """
    weights = np.ones(example.inputs.train.n)
    weight_seconds = 0.0
    if variant.spec:
        result, weights = run_engine(example, variant.spec, seed=seed)
        weight_seconds = correction_seconds(result.report["timings"])
    train_seed = int(variant.params.get("seed", seed))
    metrics, train_seconds, details = retrain_weighted(example, weights, train_seed)
    details |= {"weight_seconds": weight_seconds, "train_seconds": train_seconds}
    return row_from_metrics(example.name, variant.name, variant.family, metrics,
                            weight_seconds + train_seconds, details)


def _baseline_row(example: Example, variant: Variant, outcome: BaselineOutcome) -> Row:
    metrics, seconds, details = outcome
    return row_from_metrics(example.name, variant.name, variant.family, metrics, seconds, details)


def _measure(example: Example, variant: Variant, original: dict[str, Any], seed: int) -> Row:
    """The row of ``variant``; ``original`` holds the baseline model's eval metrics."""
    if variant.kind == "original":
        return row_from_metrics(example.name, variant.name, variant.family, original,
                                example.info.train_seconds, {"seconds": "baseline training time"})
    if variant.kind == "engine":
        return _engine_row(example, variant, seed)
    if variant.kind == "retrain":
        return _retrain_row(example, variant, seed)
    if variant.kind == "fairlearn":
        return _baseline_row(example, variant, fairlearn_dp(example, float(variant.params["eps"]), seed))
    return _baseline_row(example, variant, logistic_regression(example, seed))


def _safe_measure(example: Example, variant: Variant, original: dict[str, Any], seed: int) -> Row:
    """:func:`_measure`, with a failure recorded as the row's status instead of aborting; the
    row carries the variant's table."""
    try:
        row = _measure(example, variant, original, seed)
    except Exception as exc:  # a failing configuration must not lose the others' results
        message = " ".join(str(exc).split())[:160]
        row = Row(example.name, variant.name, variant.family, f"failed: {type(exc).__name__}: {message}")
    return dataclasses.replace(row, table=variant.table)


def run_dataset(name: ExampleName, variants: Sequence[Variant], work: Path, seed: int, say: Say,
                ) -> tuple[dict[str, dict[str, float]], list[Row], dict[str, Any]]:
    """Stage timings of the default correction, the rows, and facts about the example."""
    say(f"[{name}] building the example (baseline MLP, seed {seed})")
    example = prepare_example(name, work, seed)
    say(f"[{name}] built in {example.build_seconds:.1f} s; default correction (soft-2.3, newton)")
    default = run_engine(example, {}, robust_eval=True, seed=seed)[0].report
    plain = run_engine(example, {}, robust_eval=False, seed=seed)[0].report
    timings = {f"{name}, default": dict(default["timings"]),
               f"{name}, default without robust eval": dict(plain["timings"])}
    original = default["before"]["eval"]
    rows: list[Row] = []
    for variant in variants:
        started = time.perf_counter()
        rows.append(_safe_measure(example, variant, original, seed))
        say(f"[{name}] {variant.name}: {rows[-1].status} ({time.perf_counter() - started:.1f} s)")
    mark_pareto([r for r in rows if r.table == "main"])
    info = example.info
    facts = {"n_train": info.n_train, "n_audit": info.n_audit, "n_eval": info.n_eval,
             "in_features": info.in_features, "sensitive": example.sensitive,
             "baseline_train_seconds": info.train_seconds, "build_seconds": example.build_seconds,
             "default_spec": default["spec"], "default_after_eval": {
                 k: default["after"]["eval"].get(k) for k in ("accuracy", "demographic_parity_difference",
                                                             "equalized_odds_difference", "robust_accuracy")},
             "original_robust_accuracy": original.get("robust_accuracy")}
    return timings, rows, facts


def _machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()), "python": platform.python_version(),
            "torch": torch.__version__, "fairlearn": version("fairlearn"),
            "scikit-learn": version("scikit-learn")}


def _loads(values: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="only the rows marked quick (< 2 min)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples and the runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument("--work", type=Path, default=None,
                        help="where to build the examples (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core); 1 keeps "
                             "timings stable when other processes share the cores")
    parser.add_argument("--tables", nargs="+", choices=(*TABLES, FULL_SCOPE, LINEAR_HEAD_SCALE, THROUGHPUT),
                        default=list(TABLES),
                        help="which tables to measure: main (soft vs hard, retraining, Fairlearn), "
                             "methods (every unlearning method, hard vs soft), robustness "
                             "(robustness objective); default these three. full_scope (scope "
                             "full on Adult per MLP size and solver, with the dattri comparison: "
                             "benchmarks/full_scope.py), linear_head_scale (100 k and 1 M × 512 "
                             "logistic heads against the Gram lower bound) and throughput (jobs/min "
                             "of 1 and 2 real "
                             f"workers, {JOBS} Adult jobs each, {QUICK_THROUGHPUT_JOBS} with --quick; "
                             "starts an API and workers, ≈ 10 min on 2 cores) only when named")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _write(out: Path, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"benchmark-{'quick-' if payload['quick'] else ''}{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return path


def _run(args: argparse.Namespace, work: Path, say: Say) -> dict[str, Any]:
    engine_tables = [t for t in args.tables if t in TABLES]
    variants = select(args.quick, cast(list[Table], engine_tables))
    started = time.perf_counter()
    machine = _machine()
    timings: dict[str, dict[str, float]] = {}
    rows: list[Row] = []
    facts: dict[str, Any] = {}
    for name in cast(list[ExampleName], args.datasets if engine_tables else []):
        dataset_timings, dataset_rows, facts[name] = run_dataset(name, variants, work, args.seed, say)
        timings |= dataset_timings
        rows += dataset_rows
    throughput = (run_throughput(work / THROUGHPUT, QUICK_THROUGHPUT_JOBS if args.quick else JOBS,
                                 seed=args.seed, say=say) if THROUGHPUT in args.tables else None)
    machine["load_average_at_end"] = list(os.getloadavg())
    main_rows, method_rows, robustness_rows = ([r for r in rows if r.table == table] for table in TABLES)
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": args.quick,
            "tables": args.tables, "seed": args.seed, "machine": machine,
            "wall_seconds": time.perf_counter() - started, "stage_timings": timings,
            "datasets": facts, "rows": [r.to_dict() for r in rows], "throughput": throughput,
            "markdown": {"timings": markdown_timings(timings), "results": markdown_results(main_rows),
                         "soft_vs_hard": markdown_soft_vs_hard(main_rows),
                         "methods": markdown_methods(method_rows),
                         "robustness": markdown_robustness(robustness_rows),
                         "throughput": throughput["markdown"] if throughput else ""}}


def _full_scope(args: argparse.Namespace) -> int:
    """The full_scope table (its own script; one process per measurement)."""
    forwarded = ["--peer", "--seed", str(args.seed), "--out", str(args.out),
                 "--threads", str(args.threads or 1)]
    if args.work is not None:
        forwarded += ["--work", str(args.work / "full_scope")]
    return full_scope.main(forwarded)


def _separate_tables(args: argparse.Namespace) -> int:
    """Run the tables that are scripts of their own (one process per measurement); drop them
    from ``args.tables``. Returns the first non-zero exit code, else 0."""
    scripts: dict[str, Callable[[], int]] = {
        FULL_SCOPE: lambda: _full_scope(args),
        LINEAR_HEAD_SCALE: lambda: linear_head_scale.main(["--threads", str(args.threads or 1),
                                                           "--out", str(args.out)]),
    }
    for name, script in scripts.items():
        if name in args.tables:
            args.tables = [t for t in args.tables if t != name]
            code = script()
            if code:
                return code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the markdown tables, write the JSON; returns the exit code."""
    args = _parser().parse_args(argv)
    separate = {FULL_SCOPE, LINEAR_HEAD_SCALE} & set(args.tables)
    code = _separate_tables(args)
    if code or (separate and not args.tables):
        return code
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    say: Say = (lambda _message: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.work is not None:
        payload = _run(args, args.work, say)
    else:
        with tempfile.TemporaryDirectory(prefix="softunlearn-bench-") as tmp:
            payload = _run(args, Path(tmp), say)
    path = _write(args.out, payload)
    tables = payload["markdown"]
    if payload["stage_timings"]:
        print("## Stage timings of the default correction (seconds, CPU)\n")
        print(tables["timings"])
    if "main" in args.tables:
        print("## Eval-split results (sorted by DP difference; ★ = accuracy/DP Pareto front)\n")
        print(tables["results"])
        print("## Soft (soft-2.3, newton, ρ curve) vs hard at equal eval DP\n")
        print(tables["soft_vs_hard"])
    if "methods" in args.tables:
        print("## Unlearning methods, hard vs soft (eval split; robust evaluation on)\n")
        print(tables["methods"])
    if "robustness" in args.tables:
        print("## Objective robustness (adaptive PGD L∞ ε = 0.05): schemes and methods\n")
        print(tables["robustness"])
    if THROUGHPUT in args.tables:
        print("## Throughput per machine (real API and workers, Adult default jobs)\n")
        print(tables["throughput"])
    load = payload["machine"]
    print(f"total {payload['wall_seconds']:.0f} s; load average (1, 5, 15 min) at start "
          f"{_loads(load['load_average_at_start'])}, at end {_loads(load['load_average_at_end'])}; "
          f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
