"""Safety sweep: does any correction return a model worse than its input and call it success?

``python -m benchmarks.safety --threads 1 [--datasets adult bank compas german] [--seeds N]``

For every data set, seed (re-split and retrained baseline) and configuration, the job runs
through the public pipeline; the corrected checkpoint is then reloaded into a plain
``torch.nn.Sequential`` built here (not by the engine) and measured independently: hard-label
fairness with ``fairlearn.metrics``, accuracy, and adaptive PGD robust accuracy with an attack
written here. Counted per configuration:

- ``worse``: the audit target got worse than the input's (fairness: Fairlearn's difference on
  audit rose; robustness: independent adaptive robust accuracy on audit fell);
- ``collapse``: audit accuracy fell by more than the guard's ``max_accuracy_drop``;
- ``false success``: ``target_met`` is true but the eval change of the target metric is not an
  improvement beyond its bootstrap interval (recomputed from the report's own CI), or for
  robustness the independent adaptive eval robust accuracy did not rise;
- ``mismatch``: the report's after-numbers differ from the independent recomputation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fairlearn.metrics import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from torch.nn import functional as F

from benchmarks.engine_runs import Example, merge
from benchmarks.more_data import BenchName, prepare
from workers.engine.config import GuardConfig, spec_from_dict
from workers.engine.errors import EngineError
from workers.engine.pipeline import run_correction

__all__ = ["CONFIGS", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
PGD_EPSILON, PGD_STEPS = 0.05, 10
PGD: Mapping[str, Any] = {"kind": "pgd", "norm": "linf", "epsilon": PGD_EPSILON, "steps": PGD_STEPS}
CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "DP soft-2.3 newton (default)": {"objective": {"metric": "demographic_parity"}},
    "DP soft-2.3 newton ρ=0.9": {"objective": {"metric": "demographic_parity", "reduction": 0.9}},
    "DP hard k=0.05 refit": {"objective": {"metric": "demographic_parity"},
                             "weighting": {"scheme": "hard"}, "method": {"name": "refit"}},
    "DP soft-2.3 finetune": {"objective": {"metric": "demographic_parity"}, "method": {"name": "finetune"}},
    "EO soft-2.3 newton": {"objective": {"metric": "equal_opportunity"}},
    "EOdds soft-2.3 newton": {"objective": {"metric": "equalized_odds"}},
    "EOdds qp τ=0.01 newton": {"objective": {"metric": "equalized_odds", "utility_tolerance": 0.01},
                               "weighting": {"scheme": "qp"}},
    "robustness soft-2.3 newton": {"objective": {"metric": "robustness", "attack": PGD}},
    "robustness hard k=0.05 newton": {"objective": {"metric": "robustness", "attack": PGD},
                                      "weighting": {"scheme": "hard"}},
    "robustness qp τ=0.01 newton": {"objective": {"metric": "robustness", "attack": PGD,
                                                  "utility_tolerance": 0.01}, "weighting": {"scheme": "qp"}},
}
FAIRLEARN = {"demographic_parity": demographic_parity_difference,
             "equal_opportunity": equal_opportunity_difference,
             "equalized_odds": equalized_odds_difference}
REPORT_KEY = {"demographic_parity": "demographic_parity_difference",
              "equal_opportunity": "equal_opportunity_difference",
              "equalized_odds": "equalized_odds_difference", "robustness": "robust_accuracy"}


def _plain(state: Mapping[str, torch.Tensor], widths: list[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(torch.float64)
    model.load_state_dict({k: v.to(torch.float64) for k, v in state.items()}, strict=True)
    return model.eval()


def _pgd_correct(model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Adaptive L∞ PGD (ε 0.05, 10 steps of 2.5ε/10, from the clean point): correct under attack?"""
    eps, steps = PGD_EPSILON, PGD_STEPS
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(model(x + delta).reshape(-1), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
    with torch.no_grad():
        correct: np.ndarray = ((model(x + delta).reshape(-1) >= 0) == (y == 1)).numpy()
    return correct


def _measure(state: Mapping[str, torch.Tensor], widths: list[int], features: np.ndarray, labels: np.ndarray,
             groups: np.ndarray, robust: bool) -> dict[str, float]:
    model = _plain(state, widths)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    with torch.no_grad():
        predicted = (model(x).reshape(-1) >= 0).numpy().astype(np.int64)
    out = {"accuracy": float((predicted == labels).mean())}
    for metric, fn in FAIRLEARN.items():
        out[metric] = float(fn(labels.astype(np.int64).tolist(), predicted.tolist(),
                               sensitive_features=groups.tolist()))
    if robust:
        out["robustness"] = float(_pgd_correct(model, x, torch.from_numpy(labels.astype(np.float64))).mean())
    return out


def _check(example: Example, name: str, overrides: Mapping[str, Any], seed: int) -> dict[str, Any]:
    spec = spec_from_dict(merge({"objective": {"sensitive_attribute": example.sensitive},
                                 "evaluation": {"robustness": False}, "seed": seed}, overrides))
    metric = spec.objective.metric
    robust = metric == "robustness"
    started = time.perf_counter()
    try:
        result = run_correction(example.inputs, spec, device="cpu")
    except EngineError as exc:  # refused with a message (CLI exit 2): nothing returned
        return {"config": name, "seed": seed, "seconds": time.perf_counter() - started, "refused": str(exc)}
    seconds = time.perf_counter() - started
    widths = [example.inputs.arch.in_features, *example.inputs.arch.hidden, 1]
    report = result.report
    row: dict[str, Any] = {"config": name, "seed": seed, "seconds": seconds, "refused": None,
                           "target_met": report["target_met"],
                           "warnings": sorted({w["code"] for w in report["warnings"]})}
    measured = {}
    for split in ("audit", "eval"):
        data = getattr(example.inputs, split)
        groups = data.sensitive[example.sensitive]
        measured[split] = {when: _measure(state, widths, data.features, data.labels, groups, robust)
                           for when, state in (("before", example.inputs.state), ("after", result.state))}
    audit, evaluation = measured["audit"], measured["eval"]
    sign = 1.0 if robust else -1.0  # robustness: higher is better
    row["worse"] = sign * (audit["after"][metric] - audit["before"][metric]) < -1e-12
    drop = audit["before"]["accuracy"] - audit["after"]["accuracy"]
    row["collapse"] = drop > GuardConfig().max_accuracy_drop
    change = report["confidence"]["eval"][REPORT_KEY[metric]]["change"]
    improved = change["low"] > 0 if robust else change["high"] < 0
    independent_gain = sign * (evaluation["after"][metric] - evaluation["before"][metric]) > 0
    row["false_success"] = bool(report["target_met"] and not (improved and independent_gain))
    key = REPORT_KEY[metric]
    reported = report["after"]["eval"].get(key) if not robust else None
    row["mismatch"] = bool(
        abs(report["after"]["eval"]["accuracy"] - evaluation["after"]["accuracy"]) > 1e-9
        or (reported is not None and abs(reported - evaluation["after"][metric]) > 1e-9))
    row["eval_target_change"] = evaluation["after"][metric] - evaluation["before"][metric]
    row["eval_accuracy_change"] = evaluation["after"]["accuracy"] - evaluation["before"]["accuracy"]
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data set | configuration | runs | refused | target met | worse | collapse | false success | "
             "mismatch | eval target Δ (mean) | eval acc Δ pp (mean) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for config in CONFIGS:
            runs = [r for r in rows if r["dataset"] == dataset and r["config"] == config]
            own = [r for r in runs if not r["refused"]]
            if not own:
                if runs:
                    lines.append(f"| {dataset} | {config} | {len(runs)} | {len(runs)} | | | | | | | |")
                continue
            count = {k: sum(bool(r[k]) for r in own) for k in ("target_met", "worse", "collapse",
                                                             "false_success", "mismatch")}
            lines.append(f"| {dataset} | {config} | {len(runs)} | {len(runs) - len(own)} | "
                         f"{count['target_met']} | {count['worse']} | "
                         f"{count['collapse']} | {count['false_success']} | {count['mismatch']} | "
                         f"{np.mean([r['eval_target_change'] for r in own]):+.4f} | "
                         f"{100 * np.mean([r['eval_accuracy_change'] for r in own]):+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.safety", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["adult", "bank", "compas", "german"],
                        choices=["adult", "bank", "compas", "german"])
    parser.add_argument("--seeds", type=int, default=3, help="re-splits per small data set (compas, german)")
    parser.add_argument("--large-seeds", type=int, default=1, help="re-splits for adult and bank")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for dataset in args.datasets:
            name: BenchName = dataset
            for seed in range(args.large_seeds if dataset in ("adult", "bank") else args.seeds):
                example = prepare(name, Path(work), seed)
                for config, overrides in CONFIGS.items():
                    row = _check(example, config, overrides, seed)
                    rows.append({"dataset": dataset, **row})
                    verdict = (f"refused: {row['refused'][:80]}" if row["refused"] else
                               f"met={row['target_met']} worse={row['worse']} collapse={row['collapse']} "
                               f"false_success={row['false_success']}")
                    print(f"{dataset} seed {seed} {config}: {verdict} ({row['seconds']:.1f} s)", flush=True)
    note = (f"{platform.node()} {os.cpu_count()} cores, load {load_before[0]:.1f} before / "
            f"{os.getloadavg()[0]:.1f} after, {time.perf_counter() - started:.0f} s, "
            f"torch threads {args.threads}")
    print("\n" + _table(rows) + f"\n\n{note}")
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"safety-{stamp}.json").write_text(json.dumps({"rows": rows, "note": note}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
