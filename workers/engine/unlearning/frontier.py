"""The report's trade-off frontier: many candidate corrections from one influence computation.

Next to the chosen correction, the report shows where other requests would have led. From the
influence at the correction's starting point (computed once, and reused by the correction's
first step), each point solves the weights for one request and takes one step, unguarded:

* a soft point per reduction ρ of ``evaluation.frontier.reductions``: the job's weighting scheme
  (``qp`` when the job removes samples with ``hard``) asked to remove ρ of the audit target, as
  a job with ``objective.reduction = ρ`` and ``method.max_iterations = 1`` would;
* a hard point per share k of ``evaluation.frontier.k_fractions``: removal of the ⌊k·n⌋ rows
  whose removal lowers the target most.

The step is the job's head method (``newton`` or ``refit``), else a Newton step of the job's
influence scope. A Newton step's parameter change H⁻¹Σεᵢgᵢ is linear in ε, so with the
Hessian factorized once a point costs one triangular solve plus its evaluation. Each point is
evaluated on every split with the before/after metric keys (robust accuracy on a subsample of
the splits' robust rows, ``evaluation.frontier.robust_sample_rows``), and carries what the job's guard
would have said of it (``guard``), so a reader sees which points a job would have refused.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from workers.engine.config import HEAD_METHODS, CorrectionSpec, MethodConfig, WeightingConfig
from workers.engine.errors import InfeasibleError, NumericalError
from workers.engine.evaluation.metrics import SplitContext, evaluate_split
from workers.engine.influence.scopes import CorrectionScope
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.targets import AuditTargets
from workers.engine.unlearning.tracking import Measurement, StartInfluence, measure, rejection
from workers.engine.weights import WeightResult, solve_weights

__all__ = ["Frontier", "compute_frontier", "skipped_frontier", "step_description"]

WEIGHT_SUMMARY_KEYS = ("l2_norm", "min", "max", "down_weighted", "up_weighted", "removed",
                       "negative_effective_weights")


@dataclasses.dataclass
class Frontier:
    """The points (``report["frontier"]``) and how they were made (``report["frontier_info"]``)."""

    points: list[dict[str, Any]]
    info: dict[str, Any]


def _soft_weighting(spec: CorrectionSpec) -> WeightingConfig:
    scheme = "qp" if spec.weighting.scheme == "hard" else spec.weighting.scheme
    return dataclasses.replace(spec.weighting, scheme=scheme, on_infeasible="best_effort")


def _step_method(spec: CorrectionSpec) -> MethodConfig:
    if spec.method.name in HEAD_METHODS:
        return spec.method
    return dataclasses.replace(spec.method, name="newton")


def step_description(spec: CorrectionSpec) -> str:
    """One line saying what each frontier point is."""
    method = _step_method(spec)
    scope = "the logistic head" if spec.influence.scope == "last_layer" else "every parameter"
    return (f"one unguarded '{method.name}' step on {scope} from the influence at the correction's start "
            f"(hessian '{method.hessian}'); a soft point is what a job with objective.reduction = ρ and "
            "method.max_iterations = 1 would take before its guard")


def _evaluate(model: HeadModel, spec: CorrectionSpec, targets: AuditTargets,
              contexts: dict[str, SplitContext], start: Measurement, origin: Measurement,
              weights: WeightResult) -> dict[str, Any]:
    candidate = measure(model, targets)
    reason = rejection(candidate, start, origin, spec.guard, spec.objective.utility_tolerance,
                       -weights.predicted_target_change)
    summary = weights.summary()
    return {
        "scheme": weights.scheme,
        **{name: evaluate_split(model, context).metrics for name, context in contexts.items()},
        "target": {"audit_surrogate": candidate.target, "audit_hard": candidate.hard},
        "predicted": {"target_change": weights.predicted_target_change,
                      "utility_change": weights.predicted_utility_change, "feasible": weights.feasible},
        "weights": {key: summary[key] for key in WEIGHT_SUMMARY_KEYS},
        "guard": {"accepted": reason is None, "reason": reason},
    }


def _requests(spec: CorrectionSpec, origin: Measurement, start: Measurement,
              ) -> list[tuple[str, float, WeightingConfig, float]]:
    """(key, value, weighting, requested reduction of |target| from ``start``) for every point.

    A soft point asks for what the job would: |start| − (1 − ρ)·|origin|, ρ of the input model's
    target. Hard removal ignores the amount (it removes its share k).
    """
    soft = _soft_weighting(spec)
    frontier = spec.evaluation.frontier
    initial = abs(origin.target)
    out = [("reduction", rho, soft, abs(start.target) - (1 - rho) * initial) for rho in frontier.reductions]
    out += [("k_fraction", k, dataclasses.replace(spec.weighting, scheme="hard", k_fraction=k), initial)
            for k in frontier.k_fractions]
    return out


def _info(spec: CorrectionSpec, seconds: float, skipped: str | None, notes: list[str]) -> dict[str, Any]:
    return {"step": step_description(spec), "scheme": _soft_weighting(spec).scheme,
            "reductions": list(spec.evaluation.frontier.reductions),
            "k_fractions": list(spec.evaluation.frontier.k_fractions),
            "robust_sample_rows": spec.evaluation.frontier.robust_sample_rows,
            "seconds": seconds, "skipped": skipped, "notes": notes}


def skipped_frontier(spec: CorrectionSpec, reason: str) -> Frontier:
    """A frontier with no points and the reason why."""
    return Frontier([], _info(spec, 0.0, reason, []))


def compute_frontier(scope: CorrectionScope, spec: CorrectionSpec, targets: AuditTargets,
                     contexts: dict[str, SplitContext], influence: StartInfluence, origin: Measurement,
                     start: Measurement) -> Frontier:
    """Every frontier point of ``spec.evaluation.frontier``, from ``influence`` at ``start``.

    ``origin`` is the user's input model (the goal is a fraction of its target, as in the job);
    ``start`` the model the correction starts from (the input model, or its polished head).
    A point whose weights cannot be computed is left out, with the reason in ``info["notes"]``.
    The steps are taken together (:meth:`CorrectionScope.trial_models`): one factorization, and
    in the full scope one pass of per-sample gradients, serves every point.
    """
    began = time.perf_counter()
    notes: list[str] = []
    solved: list[tuple[str, float, WeightResult]] = []
    for key, value, weighting, request in _requests(spec, origin, start):
        try:
            if request <= 0:
                raise InfeasibleError(f"the start already meets {key} {value:g}", max_reduction=0.0)
            solved.append((key, value, solve_weights(influence.a, influence.b, request, weighting,
                                                     spec.objective.utility_tolerance)))
        except (InfeasibleError, NumericalError) as exc:
            notes.append(f"{key} {value:g} left out: {exc}")
    deltas = [weights.eps for _, _, weights in solved]
    models = scope.trial_models(deltas, _step_method(spec)) if solved else []
    sampled = {name: context.subsampled(spec.evaluation.frontier.robust_sample_rows)
               for name, context in contexts.items()}
    points = [{key: value, **_evaluate(model, spec, targets, sampled, start, origin, weights)}
              for (key, value, weights), model in zip(solved, models, strict=True)]
    skipped = None if points or notes else "evaluation.frontier lists no points"
    return Frontier(points, _info(spec, time.perf_counter() - began, skipped, notes))
