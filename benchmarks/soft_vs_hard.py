"""Can soft beat hard? Accuracy at matched eval DP on four data sets, over several seeds.

``python -m benchmarks.soft_vs_hard --threads 1 [--datasets adult bank compas german]
[--seeds N] [--adult-bank-seeds N] [--quick]``

For every data set and seed (a seed re-splits the data and re-trains the baseline MLP), each
*curve* is a sweep of one correction scheme: hard removal over k, soft schemes over the reduction
ρ, qp over ρ at a fixed utility tolerance τ, the emulated small-step path, Fairlearn's
ThresholdOptimizer over its DP tolerance and ExponentiatedGradient over its ε. Every curve starts
at the uncorrected model; eval accuracy is interpolated linearly along the curve at the first
point where its eval DP falls to a *level* (75 %, 50 %, 25 % of the original eval DP of that
seed). The per-seed difference to hard removal (``newton``, k sweep) at the same level is paired;
the tables give its mean ± sd over seeds, and a candidate *wins* on a data set when the mean over
levels and seeds exceeds 0 by more than a 95 % Student-t half-width (df = seeds − 1).

Prints markdown tables and writes everything (every point of every curve, per seed) to
``benchmarks/results/soft-vs-hard-*.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.engine_runs import DEVICE, Example, base_spec, merge, run_engine
from benchmarks.more_data import DATASETS, BenchName, prepare
from workers.engine.config import spec_from_dict
from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.influence.scopes import HeadScope
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.targets import AuditTargets
from workers.engine.weights import solve_weights

__all__ = ["CANDIDATES", "Curve", "Point", "interpolate", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.75, 0.5, 0.25)
"""Matched DP levels, as fractions of the original model's eval DP (per seed)."""
RHOS = (0.2, 0.4, 0.6, 0.8, 1.0)
QUICK_RHOS = (0.3, 0.6, 1.0)
HARD_KS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
QUICK_HARD_KS = (0.02, 0.05, 0.1, 0.2, 0.3)
QP_TAUS = (0.0, 0.02)
TO_TOLS = (0.75, 0.5, 0.25, 0.0)
"""ThresholdOptimizer ``tol`` as fractions of the original model's audit DP (0 = exact parity)."""
EG_FRACTIONS = (0.5, 0.25)
"""ExponentiatedGradient ``eps`` as fractions of the unconstrained logistic regression's train DP."""
SMALL_STEP = 0.05
"""Emulated small steps: each step asks for 5 % of the initial audit gap (20 steps to ρ = 1)."""
SMALL_STEP_MAX = 40
Say = Callable[[str], None]


@dataclass(frozen=True)
class Point:
    """One corrected model (or the original, ``param`` 0) on the eval and audit splits."""

    param: float
    eval_acc: float
    eval_dp: float
    audit_acc: float
    audit_dp: float
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Curve:
    """A sweep of one scheme from the original model, in sweep order."""

    name: str
    points: list[Point]
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Candidate:
    """A swept engine configuration: ``spec(param)`` is the partial job spec for one point."""

    name: str
    group: str
    params: tuple[float, ...]
    spec: Callable[[float], dict[str, Any]]
    hard_reference: str = "hard newton"


def _soft(method: Mapping[str, Any], weighting: Mapping[str, Any] | None = None,
          tau: float = 0.0) -> Callable[[float], dict[str, Any]]:
    def spec(rho: float) -> dict[str, Any]:
        return {"weighting": {"scheme": "soft-2.3", **(weighting or {})}, "method": dict(method),
                "objective": {"reduction": rho, "utility_tolerance": tau}}
    return spec


def _hard(method: Mapping[str, Any]) -> Callable[[float], dict[str, Any]]:
    def spec(k: float) -> dict[str, Any]:
        return {"weighting": {"scheme": "hard", "k_fraction": k}, "method": dict(method)}
    return spec


QP = {"scheme": "qp", "lower": -1.0, "upper": 1.0, "on_infeasible": "best_effort"}
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("hard newton", "baseline", HARD_KS, _hard({"name": "newton"})),
    Candidate("hard refit", "baseline", HARD_KS, _hard({"name": "refit"})),
    Candidate("hard retrain_last_k L1", "baseline", HARD_KS, _hard({"name": "retrain_last_k", "layers": 1})),
    Candidate("hard retrain_last_k L2", "baseline", HARD_KS, _hard({"name": "retrain_last_k", "layers": 2})),
    Candidate("soft-2.3 newton (default, ≤5 tracked steps)", "reference", RHOS, _soft({"name": "newton"})),
    Candidate("(a) soft-2.3 newton, max_iterations=100, tol 0.01", "a", RHOS,
              _soft({"name": "newton", "max_iterations": 100, "target_tolerance": 0.01})),
    *(Candidate(f"(b) qp [-1,1] newton τ={tau:g}", "b", RHOS, _soft({"name": "newton"}, QP, tau))
      for tau in QP_TAUS),
    Candidate("(b') qp [-1,0] newton (down-weighting only) τ=0", "b", RHOS,
              _soft({"name": "newton"}, {**QP, "upper": 0.0})),
    Candidate("(c) soft-2.3 refit", "c", RHOS, _soft({"name": "refit"}), "hard refit"),
    Candidate("(c) soft-2.3 retrain_last_k L1", "c", RHOS, _soft({"name": "retrain_last_k", "layers": 1}),
              "hard retrain_last_k L1"),
    Candidate("(c) soft-2.3 retrain_last_k L2", "c", RHOS, _soft({"name": "retrain_last_k", "layers": 2}),
              "hard retrain_last_k L2"),
    Candidate("(d) soft-2.3 newton, hessian=reweighted", "d", RHOS,
              _soft({"name": "newton", "hessian": "reweighted"})),
)
SMALL_STEPS = "(a) soft-2.3 newton, small steps (5 % of gap, emulated)"
QP_SELECTED = "(b) qp, τ selected on audit"
TO_NAME = "ThresholdOptimizer (DP, prefit MLP scores; uses A at prediction)"
EG_NAME = "ExponentiatedGradient (DP, logistic regression)"
REFERENCE = "hard newton"


# ---------------------------------------------------------------------------------------------
# Measuring


def _metrics(example: Example, model: HeadModel) -> tuple[dict[str, Any], dict[str, Any]]:
    out = []
    for data in (example.eval, example.inputs.audit):
        proba = torch.sigmoid(model.logits(data.features)).double().cpu().numpy()
        out.append(classification_metrics(proba, data.labels, data.sensitive[example.sensitive]))
    return out[0], out[1]


def _point(param: float, eval_m: Mapping[str, Any], audit_m: Mapping[str, Any], seconds: float = 0.0,
           info: dict[str, Any] | None = None) -> Point:
    return Point(param, float(eval_m["accuracy"]), float(eval_m["demographic_parity_difference"]),
                 float(audit_m["accuracy"]), float(audit_m["demographic_parity_difference"]), seconds,
                 info or {})


def original_point(example: Example) -> Point:
    """The uncorrected model (every curve's first point)."""
    model = HeadModel.from_state(example.inputs.arch, example.inputs.state, torch.device(DEVICE))
    return _point(0.0, *_metrics(example, model))


def polished_point(example: Example, seed: int) -> Point:
    """The original model after the engine's polish only (head moved to the optimum of the
    λ-regularized training objective), which every engine correction starts from."""
    spec = spec_from_dict(base_spec(example.sensitive, False, seed))
    model = HeadModel.from_state(example.inputs.arch, example.inputs.state, torch.device(DEVICE))
    targets = AuditTargets.prepare(model, example.inputs.audit, spec, example.sensitive)
    train = example.inputs.train
    scope = HeadScope(model, train.features, train.labels, targets, spec)
    report = scope.polish()
    return _point(0.0, *_metrics(example, scope.current_model()), info={"polish": report})


def _anomalies(report: Mapping[str, Any]) -> list[str]:
    """What a report claims against what it measured, where the two disagree."""
    out: list[str] = []
    target = report["target"]
    before, after = float(target["audit_before"]), float(target["audit_after"])
    if abs(after) > abs(before) + 1e-9:
        out.append(f"audit target got worse: {before:.4f} -> {after:.4f} (goal {target['audit_goal']:.4f})")
    eval_b, eval_a = report["before"]["eval"], report["after"]["eval"]
    if eval_a["demographic_parity_difference"] > eval_b["demographic_parity_difference"] + 0.01:
        out.append(f"eval DP rose {eval_b['demographic_parity_difference']:.4f} -> "
                   f"{eval_a['demographic_parity_difference']:.4f}")
    return out


def run_candidate(example: Example, candidate: Candidate, params: Sequence[float], seed: int,
                  start: Point) -> Curve:
    """One engine run per sweep value, through the public pipeline."""
    curve = Curve(candidate.name, [start])
    for param in params:
        started = time.perf_counter()
        try:
            result, _ = run_engine(example, candidate.spec(param), seed=seed)
        except Exception as exc:  # a failed point is recorded; the sweep goes on
            curve.failures.append(f"{param:g}: {type(exc).__name__}: {exc}")
            continue
        report = result.report
        info = {"iterations": report["target"].get("iterations"),
                "audit_target": report["target"], "notes": report["notes"],
                "weights": {k: report["weights"].get(k) for k in ("l2_norm", "min", "max", "removed")},
                "anomalies": _anomalies(report)}
        curve.points.append(_point(param, report["after"]["eval"], report["after"]["audit"],
                                   time.perf_counter() - started, info))
    return curve


def small_step_path(example: Example, seed: int, start: Point, step: float = SMALL_STEP,
                    max_steps: int = SMALL_STEP_MAX) -> Curve:
    """Soft-2.3 newton in many small tracked steps, emulated with the engine's own pieces.

    The job spec cannot ask for small steps: every tracking iteration requests the whole
    remaining reduction. Chaining jobs (the corrected model as the next job's input) does not work
    either: the next job starts with all weights 1, so its polish (or, with polishing off, the
    Newton step's residual gradient) pulls the head back to the unweighted optimum, i.e. undoes the
    previous correction. So this loop drives the engine's ``HeadScope`` (influence → soft-2.3
    weights → Newton step, cumulative weights kept) with a goal that moves ``step`` × the initial
    audit gap per iteration, and evaluates after every step: one run gives the whole path.
    """
    spec = spec_from_dict(merge(base_spec(example.sensitive, False, seed), {"method": {"name": "newton"}}))
    model = HeadModel.from_state(example.inputs.arch, example.inputs.state, torch.device(DEVICE))
    targets = AuditTargets.prepare(model, example.inputs.audit, spec, example.sensitive)
    train = example.inputs.train
    scope = HeadScope(model, train.features, train.labels, targets, spec)
    started = time.perf_counter()
    scope.polish()
    initial = abs(scope.target()[0])
    curve = Curve(SMALL_STEPS, [start])
    for index in range(max_steps):
        value, grad = scope.target()
        goal = max(0.0, initial * (1 - step * (index + 1)))
        if abs(value) <= 1e-6 * initial:
            break
        request = abs(value) - goal
        if request <= 0:
            continue
        scope.prepare()
        _, utility_grad = scope.utility()
        target_influence, b = scope.influences([grad, utility_grad])
        a = (1.0 if value >= 0 else -1.0) * target_influence
        solved = solve_weights(a, b, request, spec.weighting, 0.0, (scope.weights - 1).cpu().numpy())
        snapshot = scope.snapshot()
        scope.step(solved.eps, spec.method)
        after = abs(scope.target()[0])
        if abs(value) - after < 0.5 * -solved.predicted_target_change:
            scope.restore(snapshot)
            curve.failures.append(f"step {index + 1}: realized {abs(value) - after:.4g} < half of "
                                  f"predicted {-solved.predicted_target_change:.4g}; stopped")
            break
        rho = 1 - after / initial
        curve.points.append(_point(rho, *_metrics(example, scope.current_model()),
                                   time.perf_counter() - started, {"step": index + 1}))
        if goal == 0.0:
            break
    return curve


def chaining_check(example: Example, seed: int) -> list[dict[str, Any]]:
    """Why small steps cannot be chained jobs: a second job from the corrected model.

    Job 1: soft-2.3 newton ρ = 0.6. Job 2 takes job 1's corrected checkpoint as its input and asks
    for another 5 % (ρ = 0.05, one iteration), once with the default polish and once with
    ``influence.polish_max_steps = 0``. Rows: eval DP and accuracy of the input and output of each
    job, and what job 2's report says about its audit target.
    """
    first, _ = run_engine(example, {"objective": {"reduction": 0.6}}, seed=seed)
    rows = [{"job": "1: soft-2.3 newton ρ=0.6 from the original",
             "eval_before": first.report["before"]["eval"], "eval_after": first.report["after"]["eval"],
             "target": first.report["target"], "polish": first.report["influence"].get("polish")}]
    chained = Example(example.name, example.info, replace(example.inputs, state=first.state),
                      example.sensitive, example.settings, 0.0)
    for steps in (50, 0):
        second, _ = run_engine(chained, {"objective": {"reduction": 0.05}, "method": {"max_iterations": 1},
                                         "influence": {"polish_max_steps": steps}}, seed=seed)
        rows.append({"job": f"2: ρ=0.05 from job 1's model, polish_max_steps={steps}",
                     "eval_before": second.report["before"]["eval"],
                     "eval_after": second.report["after"]["eval"], "target": second.report["target"],
                     "polish": second.report["influence"].get("polish"), "notes": second.report["notes"]})
    return [{k: ({m: v[m] for m in ("accuracy", "demographic_parity_difference")}
                 if k.startswith("eval") else v) for k, v in row.items()} for row in rows]


def markdown_chaining(name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """The chaining check as a table."""
    lines = [f"| {name}: job | eval acc in → out | eval DP in → out | audit target: before → goal → after "
             "(as the job reports it) | polish gradient norm before |",
             "|---|---|---|---|---:|"]
    for row in rows:
        b, a, t = row["eval_before"], row["eval_after"], row["target"]
        polish = row.get("polish") or {}
        lines.append(f"| {row['job']} | {b['accuracy']:.4f} → {a['accuracy']:.4f} | "
                     f"{b['demographic_parity_difference']:.4f} → {a['demographic_parity_difference']:.4f} | "
                     f"{t['audit_before']:.4f} → {t['audit_goal']:.4f} → {t['audit_after']:.4f} | "
                     f"{polish.get('gradient_norm_before', float('nan')):.3g} |")
    return "\n".join(lines)


def _scores_estimator(model: HeadModel) -> Any:
    """A prefit scikit-learn classifier around the MLP's probabilities (for ThresholdOptimizer)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scores(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def __init__(self, network: HeadModel) -> None:
            self.network = network

        def fit(self, features: np.ndarray, labels: np.ndarray, **_: Any) -> Any:
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, features: np.ndarray) -> np.ndarray:
            logits = self.network.logits(np.asarray(features, dtype=np.float64))
            p = torch.sigmoid(logits).double().cpu().numpy()
            return np.stack([1 - p, p], axis=1)

        def predict(self, features: np.ndarray) -> np.ndarray:
            return (self.predict_proba(features)[:, 1] >= 0.5).astype(np.int64)

    return Scores(model).fit(np.zeros((1, 1)), np.zeros(1))


def threshold_optimizer(example: Example, seed: int, start: Point) -> Curve:
    """Fairlearn ThresholdOptimizer on the MLP's scores, fitted on the audit split, tol sweep."""
    from fairlearn.postprocessing import ThresholdOptimizer

    model = HeadModel.from_state(example.inputs.arch, example.inputs.state, torch.device(DEVICE))
    audit, evaluation = example.inputs.audit, example.eval
    curve = Curve(TO_NAME, [start])
    for fraction in TO_TOLS:
        started = time.perf_counter()
        tol = fraction * start.audit_dp if fraction > 0 else None
        try:
            mitigator = ThresholdOptimizer(estimator=_scores_estimator(model),
                                           constraints="demographic_parity", prefit=True,
                                           predict_method="predict_proba", tol=tol)
            mitigator.fit(audit.features, audit.labels, sensitive_features=audit.sensitive[example.sensitive])
            metrics = []
            for data in (evaluation, audit):
                labels = np.asarray(mitigator.predict(data.features, sensitive_features=data.sensitive[
                    example.sensitive], random_state=seed), dtype=np.float64)
                metrics.append(classification_metrics(labels, data.labels, data.sensitive[example.sensitive]))
        except Exception as exc:  # recorded, the sweep goes on
            curve.failures.append(f"tol {fraction:g}: {type(exc).__name__}: {exc}")
            continue
        curve.points.append(_point(fraction, metrics[0], metrics[1], time.perf_counter() - started,
                                   {"tol": tol}))
    return curve


def exponentiated_gradient(example: Example, seed: int) -> Curve:
    """Fairlearn ExponentiatedGradient + DemographicParity over logistic regression (eps sweep).

    Its first point is the unconstrained logistic regression (another model than the MLP: its
    accuracy is compared at matched DP like every curve, but it does not start at the MLP).
    """
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    train, audit, evaluation = example.inputs.train, example.inputs.audit, example.eval
    groups = {name: d.sensitive[example.sensitive] for name, d in (("train", train), ("audit", audit),
                                                                    ("eval", evaluation))}
    started = time.perf_counter()
    base = LogisticRegression(max_iter=1000).fit(train.features, train.labels)
    splits = (evaluation, audit)
    base_m = [classification_metrics(base.predict_proba(d.features)[:, 1], d.labels, groups[d.name])
              for d in splits]
    train_dp = float(classification_metrics(base.predict_proba(train.features)[:, 1], train.labels,
                                            groups["train"])["demographic_parity_difference"])
    curve = Curve(EG_NAME, [_point(0.0, base_m[0], base_m[1], time.perf_counter() - started)])
    for fraction in EG_FRACTIONS:
        started = time.perf_counter()
        eps = fraction * train_dp
        mitigator = ExponentiatedGradient(LogisticRegression(max_iter=1000), constraints=DemographicParity(),
                                          eps=eps)
        mitigator.fit(train.features, train.labels, sensitive_features=groups["train"])
        metrics = [classification_metrics(np.asarray(mitigator.predict(d.features, random_state=seed),
                                                     dtype=np.float64), d.labels, groups[d.name])
                   for d in splits]
        curve.points.append(_point(fraction, metrics[0], metrics[1], time.perf_counter() - started,
                                   {"eps": eps}))
    return curve


# ---------------------------------------------------------------------------------------------
# Matching DP


def interpolate(points: Sequence[Point], level: float, split: str = "eval") -> float | None:
    """Accuracy where the curve's DP first falls to ``level`` (linear between neighbours).

    ``None`` when the curve never reaches it. A curve whose first point is already at or below the
    level (ExponentiatedGradient's logistic regression) is read at that first point.
    """
    dp = [p.eval_dp if split == "eval" else p.audit_dp for p in points]
    acc = [p.eval_acc if split == "eval" else p.audit_acc for p in points]
    if not dp:
        return None
    if dp[0] <= level:
        return acc[0]
    for i in range(1, len(dp)):
        if dp[i] <= level:
            t = (dp[i - 1] - level) / (dp[i - 1] - dp[i])
            return acc[i - 1] + t * (acc[i] - acc[i - 1])
    return None


def _matched(curves: Mapping[str, Curve], start: Point, split: str) -> dict[str, list[float | None]]:
    base = start.eval_dp if split == "eval" else start.audit_dp
    return {name: [interpolate(c.points, f * base, split) for f in LEVELS] for name, c in curves.items()}


def select_qp(curves: Mapping[str, Curve], start: Point) -> str | None:
    """The qp τ whose audit accuracy at the matched audit DP levels is highest on average."""
    audit = _matched(curves, start, "audit")
    best: tuple[float, str] | None = None
    for name, values in audit.items():
        if not name.startswith("(b) qp [") or any(v is None for v in values):
            continue
        score = float(np.mean([v for v in values if v is not None]))
        if best is None or score > best[0]:
            best = (score, name)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------
# One data set


def run_seed(name: BenchName, seed: int, root: Path, quick: bool, with_eg: bool, say: Say,
             ) -> dict[str, Any]:
    """Every curve for one data set and seed."""
    example = prepare(name, root, seed)
    start = original_point(example)
    polished = polished_point(example, seed)
    say(f"{name} seed {seed}: {example.info.n_train}/{example.info.n_audit}/{example.info.n_eval} rows, "
        f"eval acc {start.eval_acc:.4f}, eval DP {start.eval_dp:.4f}")
    curves: dict[str, Curve] = {}
    rhos, ks = (QUICK_RHOS, QUICK_HARD_KS) if quick else (RHOS, HARD_KS)
    for candidate in CANDIDATES:
        if quick and candidate.group in ("c", "d") and "L2" not in candidate.name:
            continue
        started = time.perf_counter()
        params = ks if candidate.group == "baseline" else rhos
        curves[candidate.name] = run_candidate(example, candidate, params, seed, start)
        say(f"  {candidate.name}: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    curves[SMALL_STEPS] = small_step_path(example, seed, start)
    curves[TO_NAME] = threshold_optimizer(example, seed, start)
    say(f"  small steps + ThresholdOptimizer: {time.perf_counter() - started:.1f} s")
    if with_eg:
        started = time.perf_counter()
        curves[EG_NAME] = exponentiated_gradient(example, seed)
        say(f"  ExponentiatedGradient: {time.perf_counter() - started:.1f} s")
    chaining = chaining_check(example, seed) if seed == 0 else None
    chosen = select_qp(curves, start)
    if chosen is not None:
        curves[QP_SELECTED] = Curve(QP_SELECTED, curves[chosen].points)
    return {
        "seed": seed, "rows": [example.info.n_train, example.info.n_audit, example.info.n_eval],
        "features": example.info.in_features, "start": start.__dict__, "polished": polished.__dict__,
        "qp_selected": chosen,
        "chaining": chaining,
        "matched_eval": _matched(curves, start, "eval"),
        "curves": {n: {"points": [p.__dict__ for p in c.points], "failures": c.failures}
                   for n, c in curves.items()},
    }


# ---------------------------------------------------------------------------------------------
# Summaries and tables


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n >= 2 else math.inf


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if arr.size >= 2 else math.nan
    return float(arr.mean()) if arr.size else math.nan, sd, int(arr.size)


def differences(seeds: Sequence[Mapping[str, Any]], name: str, reference: str | None,
                ) -> tuple[list[list[float]], list[float]]:
    """Per level, the per-seed accuracy differences (pp) name − reference; and per seed, their
    mean over the levels both curves reached (a seed where no level is reached by both is left
    out; ``reference`` None: the difference to the uncorrected model, the cost of the correction)."""
    per_level: list[list[float]] = [[] for _ in LEVELS]
    per_seed: list[float] = []
    for run in seeds:
        matched = run["matched_eval"]
        if name not in matched or (reference is not None and reference not in matched):
            continue
        base = matched[reference] if reference is not None else [run["start"]["eval_acc"]] * len(LEVELS)
        diffs = []
        for i, (a, b) in enumerate(zip(matched[name], base, strict=True)):
            if a is not None and b is not None:
                per_level[i].append(100 * (a - b))
                diffs.append(100 * (a - b))
        if diffs:
            per_seed.append(float(np.mean(diffs)))
    return per_level, per_seed


def reached(seeds: Sequence[Mapping[str, Any]], name: str) -> tuple[int, int]:
    """(levels × seeds at which the curve reaches the DP level, levels × seeds measured)."""
    hits = total = 0
    for run in seeds:
        values = run["matched_eval"].get(name)
        if values is None:
            continue
        total += len(values)
        hits += sum(v is not None for v in values)
    return hits, total


def verdict(per_seed: Sequence[float]) -> str:
    """win / loss / tie from the per-seed mean differences (95 % t half-width)."""
    mean, sd, n = _stats(per_seed)
    if n < 2:
        return "n/a"
    half = _t95(n) * sd / math.sqrt(n)
    if mean - half > 0:
        return "**win**"
    if mean + half < 0:
        return "loss"
    return "tie"


def _fmt(values: Sequence[float], seeds: int) -> str:
    mean, sd, n = _stats(values)
    if n == 0:
        return "not reached"
    text = f"{mean:+.2f}" + (f" ± {sd:.2f}" if n >= 2 else "")
    return text + (f" ({n}/{seeds})" if n < seeds else "")


def curve_names(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Every curve measured, in a stable order (engine candidates first)."""
    names: list[str] = []
    for runs in results.values():
        for run in runs:
            for name in run["matched_eval"]:
                if name not in names:
                    names.append(name)
    order = [c.name for c in CANDIDATES] + [SMALL_STEPS, QP_SELECTED, TO_NAME, EG_NAME]
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def reference_of(name: str) -> str | None:
    """The hard curve with the same unlearning method, when it is not hard newton."""
    for candidate in CANDIDATES:
        if candidate.name == name and candidate.hard_reference != REFERENCE:
            return candidate.hard_reference
    return None


def markdown_overview(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Per data set: rows, seeds, original eval accuracy and DP, hard's accuracy at the levels."""
    lines = ["| data set | rows train/audit/eval | features | seeds | original eval acc | original eval DP | "
             "after polish only: eval acc | eval DP | "
             + " | ".join(f"hard newton acc @ {int(f * 100)} % DP" for f in LEVELS) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(LEVELS)]
    for name, runs in results.items():
        acc = _stats([r["start"]["eval_acc"] for r in runs])
        dp = _stats([r["start"]["eval_dp"] for r in runs])
        p_acc = _stats([r["polished"]["eval_acc"] for r in runs])
        p_dp = _stats([r["polished"]["eval_dp"] for r in runs])
        hard = []
        for i in range(len(LEVELS)):
            values = [r["matched_eval"][REFERENCE][i] for r in runs
                      if r["matched_eval"].get(REFERENCE, [None] * len(LEVELS))[i] is not None]
            m, s, n = _stats(values)
            hard.append(f"{m:.4f} ± {s:.4f}" + (f" ({n}/{len(runs)})" if n < len(runs) else "")
                        if n else "not reached")
        rows = "/".join(f"{v:,}" for v in runs[0]["rows"])
        lines.append(f"| {name} | {rows} | {runs[0]['features']} | {len(runs)} | "
                     f"{acc[0]:.4f} ± {acc[1]:.4f} | {dp[0]:.4f} ± {dp[1]:.4f} | "
                     f"{p_acc[0]:.4f} ± {p_acc[1]:.4f} | {p_dp[0]:.4f} ± {p_dp[1]:.4f} | "
                     + " | ".join(hard) + " |")
    return "\n".join(lines)


def markdown_levels(name: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """One data set: Δ accuracy (pp) vs hard newton per level, mean ± sd over seeds."""
    lines = [f"#### {name} ({len(runs)} seeds): Δ eval accuracy vs hard newton, pp, mean ± sd",
             "",
             "| candidate | " + " | ".join(f"@ {int(f * 100)} % DP" for f in LEVELS)
             + " | mean over levels | verdict | vs hard, same method | levels reached (candidate / hard) "
             "| cost vs original (pp) |",
             "|---|" + "---:|" * (len(LEVELS) + 1) + "---|---|---|---:|"]
    results = {name: runs}
    hits, total = reached(runs, REFERENCE)
    lines.append(f"| {REFERENCE} (reference) | " + " | ".join("0" for _ in LEVELS) + " | 0 | | | "
                 f"{hits}/{total} | {_fmt(differences(runs, REFERENCE, None)[1], len(runs))} |")
    for curve in curve_names(results):
        if curve == REFERENCE:
            continue
        per_level, per_seed = differences(runs, curve, REFERENCE)
        same = reference_of(curve)
        same_text = ""
        if same is not None:
            _, same_seed = differences(runs, curve, same)
            same_text = f"{_fmt(same_seed, len(runs))} {verdict(same_seed)}"
        lines.append(f"| {curve} | " + " | ".join(_fmt(v, len(runs)) for v in per_level)
                     + f" | {_fmt(per_seed, len(runs))} | {verdict(per_seed)} | {same_text} | "
                     + " / ".join(f"{h}/{t}" for h, t in (reached(runs, curve), reached(runs, REFERENCE)))
                     + f" | {_fmt(differences(runs, curve, None)[1], len(runs))} |")
    return "\n".join(lines)


def markdown_verdicts(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Per candidate: verdict per data set and the number of wins."""
    names = [n for n in curve_names(results) if n != REFERENCE]
    datasets = list(results)
    lines = ["| candidate | " + " | ".join(datasets) + " | wins vs hard newton |",
             "|---|" + "---|" * len(datasets) + "---:|"]
    for curve in names:
        cells, wins = [], 0
        for dataset in datasets:
            runs = results[dataset]
            _, per_seed = differences(runs, curve, REFERENCE)
            v = verdict(per_seed)
            wins += v == "**win**"
            hits, total = reached(runs, curve)
            hard_hits, hard_total = reached(runs, REFERENCE)
            cell = f"{_fmt(per_seed, len(runs))} {v}"
            if hits != hard_hits:
                cell += f"; reaches {hits}/{total} level·seeds, hard {hard_hits}/{hard_total}"
            cells.append(cell)
        lines.append(f"| {curve} | " + " | ".join(cells) + f" | {wins}/{len(datasets)} |")
    return "\n".join(lines)


def anomalies(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Engine runs whose report disagrees with what they did (see :func:`_anomalies`)."""
    out = []
    for dataset, runs in results.items():
        for run in runs:
            for name, curve in run["curves"].items():
                for point in curve["points"]:
                    for text in point["info"].get("anomalies", []):
                        out.append(f"{dataset} seed {run['seed']} {name} @ {point['param']:g}: {text}")
                for failure in curve["failures"]:
                    out.append(f"{dataset} seed {run['seed']} {name}: {failure}")
    return out


def machine() -> dict[str, Any]:
    """Where and under what load this ran."""
    versions: dict[str, str | None] = {}
    for package in ("torch", "fairlearn", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soft_vs_hard",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=10, help="seeds for compas and german (default 10)")
    parser.add_argument("--adult-bank-seeds", type=int, default=4,
                        help="seeds for adult and bank (default 4)")
    parser.add_argument("--eg-seeds-adult-bank", type=int, default=1,
                        help="seeds with ExponentiatedGradient on adult/bank (≈1 min per fit; default 1)")
    parser.add_argument("--eg-seeds-small", type=int, default=3,
                        help="seeds with ExponentiatedGradient on compas/german (default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer sweep points and candidates, 2 seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (use 1 on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    say: Say = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="soft-vs-hard-") as work:
        for dataset in args.datasets:
            large = dataset in ("adult", "bank")
            seeds = 2 if args.quick else (args.adult_bank_seeds if large else args.seeds)
            eg_seeds = 0 if args.quick and large else 1 if args.quick else (
                args.eg_seeds_adult_bank if large else args.eg_seeds_small)
            results[dataset] = [run_seed(dataset, seed, Path(work), args.quick, seed < eg_seeds, say)
                                for seed in range(seeds)]
    seconds = time.perf_counter() - started
    info = machine()
    info["loadavg_before"] = load_before
    text = "\n\n".join([
        f"Machine: {info['platform']}, {info['cpus']} CPUs, Python {info['python']}, torch "
        f"{info['versions']['torch']} ({info['torch_threads']} thread(s)), fairlearn "
        f"{info['versions']['fairlearn']}; load average before {load_before[0]:.2f}, after "
        f"{info['loadavg'][0]:.2f} / {info['loadavg'][1]:.2f} / {info['loadavg'][2]:.2f} (1/5/15 min); "
        f"run {seconds:.0f} s.",
        "### Data sets and hard removal (newton) at matched eval DP\n\n" + markdown_overview(results),
        "### Verdicts (per seed, the mean over the DP levels both curves reach of Δ eval accuracy vs "
        "hard newton, pp; mean ± sd over seeds; win/loss = beyond the 95 % t interval)\n\n"
        + markdown_verdicts(results),
        *(markdown_levels(name, runs) for name, runs in results.items()),
    ])
    text += "\n\n### Chaining jobs (seed 0): a second job from the corrected model\n\n" + "\n\n".join(
        markdown_chaining(name, runs[0]["chaining"]) for name, runs in results.items() if runs[0]["chaining"])
    found = anomalies(results)
    if found:
        text += ("\n\n### Engine runs whose report disagrees with the measurement, and failures\n\n"
                 + "\n".join(f"- {line}" for line in found))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"soft-vs-hard-{stamp}.json"
    path.write_text(json.dumps({"machine": info, "seconds": seconds, "levels": LEVELS,
                                "argv": list(argv or []), "quick": args.quick, "results": results,
                                "markdown": text},
                               indent=1, default=str), encoding="utf-8")
    say(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
