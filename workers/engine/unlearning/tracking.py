"""Guarded correction steps: every step is measured on the audit set and kept only if it helps.

Head methods (``newton``, ``refit``) track the target: influence → weights → step, repeated
from the new parameters until the audit target reaches its goal. Network methods take one step
with weights from the influence at the input model. Either way each step, the first included,
is re-measured on the corrected model (:func:`measure`) and judged against the model before it
and the user's input model (:func:`rejection`, thresholds in :class:`GuardConfig`); a step that
fails is shortened (halved, ``guard.line_search_steps`` times) and, if no length passes, undone.
The job then ends with what was accepted, which may be the input model itself: a correction
never returns a model worse on the audit target than the one it was given.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workers.engine.config import HEAD_METHODS, CorrectionSpec, GuardConfig
from workers.engine.errors import InfeasibleError, NumericalError
from workers.engine.evaluation.metrics import HARD_METRIC, classification_metrics
from workers.engine.influence.scopes import CorrectionScope
from workers.engine.io.datasets import Dataset
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.targets import AuditTargets, acceptance_attack
from workers.engine.progress import StageClock
from workers.engine.weights import WeightResult, solve_weights

__all__ = ["Measurement", "StartInfluence", "Tracking", "guarded_network_step", "influence_at", "measure",
           "rejection", "track_head"]


@dataclass(frozen=True)
class Measurement:
    """One model measured on the audit set."""

    target: float
    """The objective's surrogate, signed (a gap may be negative with a privileged group)."""
    hard: float | None
    """The objective's hard-label metric (fairness objectives; None for robustness)."""
    utility: float
    """Mean audit log-loss."""
    accuracy: float
    robust_accuracy: float | None
    """Adaptive robust accuracy under the acceptance attack (robustness objectives)."""
    robust_correct: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Per audit row: right under that attack (for the guard's paired test)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the report (without the per-row outcomes)."""
        return {"target": self.target, "hard": self.hard, "utility": self.utility,
                "accuracy": self.accuracy, "robust_accuracy": self.robust_accuracy}


def measure(model: HeadModel, targets: AuditTargets) -> Measurement:
    """Target, hard-label metric, utility, accuracy and adaptive robust accuracy of ``model``."""
    shared = None
    if targets.adaptive and acceptance_attack(targets.spec) == targets.spec.objective.attack:
        shared = targets.adversarial_inputs(model)  # one attack serves the target and the check
    objective, utility = targets.for_model(model, shared)
    theta = model.theta()
    audit = targets.audit
    proba = torch.sigmoid(model.head_logits(audit.features)).cpu().numpy()
    metrics = classification_metrics(proba, audit.labels, audit.sensitive[targets.sensitive])
    key = HARD_METRIC.get(targets.spec.objective.metric)
    robust = targets.robust_correct(model, shared)
    return Measurement(
        target=objective.value(theta),
        hard=None if key is None else metrics[key],
        utility=utility.value(theta),
        accuracy=float(metrics["accuracy"]),
        robust_accuracy=None if robust is None else float(robust.mean()),
        robust_correct=robust,
    )


def rejection(candidate: Measurement, current: Measurement, origin: Measurement, guard: GuardConfig,
              utility_tolerance: float, predicted_reduction: float | None) -> str | None:
    """Why ``candidate`` may not replace ``current`` (None: accept).

    ``origin`` is the user's input model; ``predicted_reduction`` the first-order reduction of
    |target| the step was computed to deliver (None: not a first-order step).
    """
    before, after = abs(current.target), abs(candidate.target)
    if not after < before:
        return f"the audit target did not shrink ({before:.4g} -> {after:.4g})"
    if candidate.hard is not None and origin.hard is not None and candidate.hard > origin.hard + 1e-12:
        return (f"the hard-label audit metric would be worse than the input model's "
                f"({origin.hard:.4g} -> {candidate.hard:.4g})")
    if predicted_reduction is not None and predicted_reduction > 0:
        realized = before - after
        if realized < guard.min_progress_ratio * predicted_reduction:
            return (f"it realized a target reduction of {realized:.4g} against {predicted_reduction:.4g} "
                    f"predicted (less than guard.min_progress_ratio = {guard.min_progress_ratio:g})")
    allowed = origin.utility + utility_tolerance + guard.max_log_loss_increase
    if candidate.utility > allowed:
        return (f"audit log-loss would rise from {origin.utility:.4g} to {candidate.utility:.4g} "
                f"(allowed {allowed:.4g}: utility_tolerance + guard.max_log_loss_increase)")
    if candidate.accuracy < origin.accuracy - guard.max_accuracy_drop:
        return (f"audit accuracy would fall from {origin.accuracy:.4f} to {candidate.accuracy:.4f} "
                f"(more than guard.max_accuracy_drop = {guard.max_accuracy_drop:g})")
    return _robust_rejection(candidate, current, guard)


def _robust_rejection(candidate: Measurement, current: Measurement, guard: GuardConfig) -> str | None:
    """Robustness: the step must win more audit rows under the adaptive attack than it loses, by
    ``guard.robust_gain_z`` standard errors of a paired (McNemar) sign test: a gain of a handful
    of rows is noise, and a model changed for noise is a model changed for nothing."""
    if candidate.robust_correct is None or current.robust_correct is None:
        return None
    gained = int((candidate.robust_correct & ~current.robust_correct).sum())
    lost = int((~candidate.robust_correct & current.robust_correct).sum())
    if gained - lost > guard.robust_gain_z * math.sqrt(gained + lost) and gained > lost:
        return None
    return (f"adaptive robust accuracy on audit did not improve beyond noise ({current.robust_accuracy:.4f} "
            f"-> {candidate.robust_accuracy:.4f}: {gained} rows gained, {lost} lost; guard.robust_gain_z = "
            f"{guard.robust_gain_z:g})")


@dataclass
class Tracking:
    """The state of a correction across its steps."""

    goal: float
    """|target| to reach."""
    initial: float
    """|target| of the input model."""
    tau_left: float
    origin: Measurement
    records: list[dict[str, Any]] = field(default_factory=list)
    undone: list[dict[str, Any]] = field(default_factory=list)
    solved: list[WeightResult] = field(default_factory=list)
    stop_reason: str = ""
    bound_reached: bool = False

    def reached(self, value: float, tolerance: float) -> bool:
        """Whether |``value``| is within ``tolerance`` × initial of the goal."""
        return abs(value) <= self.goal + tolerance * self.initial


def _reduction_bound(state: Tracking, value: float, max_reduction: float) -> float:
    """The largest objective.reduction whose request from |``value``| is feasible, rounded down."""
    reachable = (state.initial - abs(value) + max_reduction) / state.initial
    return max(math.floor(reachable * 1000) / 1000, 0.0)


@dataclass(frozen=True)
class StartInfluence:
    """Influences at the point a correction starts from, computed once and shared by the report's
    frontier and the correction's first step."""

    a: np.ndarray
    """Oriented target influences: removing row i changes |target| by aᵢ."""
    b: np.ndarray
    """Utility influences: removing row i changes the mean audit log-loss by bᵢ."""
    solver: dict[str, Any]


def influence_at(scope: CorrectionScope, value: float) -> StartInfluence:
    """Target and utility influences at the scope's current parameters (``value``: the signed target)."""
    solver = scope.prepare()
    utility_grad = scope.utility()[1]
    sign = 1.0 if value >= 0 else -1.0
    target, utility = scope.influences([scope.target()[1], utility_grad])
    return StartInfluence(sign * target, utility, solver)


def _solve(scope: CorrectionScope, spec: CorrectionSpec, clock: StageClock, state: Tracking,
           value: float, first: bool, fraction: float, known: StartInfluence | None = None,
           ) -> tuple[WeightResult, dict[str, Any]]:
    """Influence at the current parameters (``known`` when already computed there), then the
    weights for the rest of the way."""
    with clock.stage("influence", fraction):
        influence = known if known is not None else influence_at(scope, value)
    weighting = spec.weighting if first else dataclasses.replace(spec.weighting, on_infeasible="best_effort")
    with clock.stage("weights", fraction + 0.05):
        try:
            result = solve_weights(influence.a, influence.b, abs(value) - state.goal, weighting,
                                   state.tau_left, (scope.weights - 1).cpu().numpy())
        except InfeasibleError as exc:
            bound = _reduction_bound(state, value, exc.max_reduction)
            raise InfeasibleError(f"{exc} (as a fraction of the audit target: objective.reduction at most "
                                  f"{bound:.3f})", exc.max_reduction) from exc
    return result, influence.solver


def _record(index: int, current: Measurement, candidate: Measurement, weights: WeightResult,
            notes: list[str], solver: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "iteration": index,
        "target_before": current.target,
        "target_after": candidate.target,
        "predicted_target_change": weights.predicted_target_change,
        "realized_target_change": abs(candidate.target) - abs(current.target),
        "utility_before": current.utility,
        "utility_after": candidate.utility,
        "predicted_utility_change": weights.predicted_utility_change,
        "realized_utility_change": candidate.utility - current.utility,
        "audit_accuracy_after": candidate.accuracy,
        "robust_accuracy_after": candidate.robust_accuracy,
        "step_scale": attempts[-1]["scale"] if attempts else None,
        "line_search": attempts,
        "solver": solver,
        "notes": notes,
    }


def _line_search(scope: CorrectionScope, result: WeightResult, spec: CorrectionSpec, targets: AuditTargets,
                 state: Tracking, current: Measurement, clock: StageClock, fraction: float,
                 ) -> tuple[float | None, Measurement | None, list[str], list[dict[str, Any]]]:
    """Take the step, halving it until the guard accepts it; undo it if it never does."""
    snapshot = scope.snapshot()
    attempts: list[dict[str, Any]] = []
    scale = 1.0
    for attempt in range(spec.guard.line_search_steps + 1):
        if attempt:
            scope.restore(snapshot)
        with clock.stage("unlearn", fraction):
            try:
                notes = scope.step(result.eps * scale, spec.method)
                candidate = measure(scope.current_model(), targets)
            except NumericalError as exc:  # e.g. a reweighted Hessian that is no longer definite
                attempts.append({"scale": scale, "rejected": f"the step could not be computed: {exc}"})
                scale /= 2
                continue
        reason = rejection(candidate, current, state.origin, spec.guard, spec.objective.utility_tolerance,
                           -result.predicted_target_change * scale)
        attempts.append({"scale": scale, "rejected": reason})
        if reason is None:
            return scale, candidate, notes, attempts
        scale /= 2
    scope.restore(snapshot)
    return None, None, [], attempts


def track_head(scope: CorrectionScope, spec: CorrectionSpec, targets: AuditTargets, clock: StageClock,
               state: Tracking, start: Measurement, known: StartInfluence | None = None) -> None:
    """Head methods: guarded influence → weights → step until the goal (or a step fails);
    ``known``: the influence at ``start``, if already computed."""
    budget = 1 if spec.weighting.scheme == "hard" else spec.method.max_iterations
    current = start
    state.stop_reason = f"method.max_iterations ({budget}) reached"
    for index in range(budget):
        if state.reached(current.target, spec.method.target_tolerance):
            state.stop_reason = "goal reached"
            break
        fraction = 0.2 + 0.5 * index / budget
        try:
            result, solver = _solve(scope, spec, clock, state, current.target, index == 0, fraction,
                                    known if index == 0 else None)
        except (InfeasibleError, NumericalError) as exc:
            if index == 0:
                raise
            state.stop_reason = f"iteration {index + 1} could not be computed: {exc}"
            break
        scale, candidate, notes, attempts = _line_search(scope, result, spec, targets, state, current, clock,
                                                         fraction + 0.1)
        if scale is None or candidate is None:
            state.undone.append({"iteration": index + 1, "attempts": attempts,
                                 "predicted_target_change": result.predicted_target_change})
            state.stop_reason = (f"iteration {index + 1} was undone at every step length: "
                                 f"{attempts[0]['rejected']}")
            break
        step = result.scaled(scale)
        state.solved.append(step)
        state.tau_left = max(0.0, state.tau_left - max(0.0, step.predicted_utility_change))
        state.records.append(_record(index + 1, current, candidate, step, step.notes + notes, solver,
                                     attempts))
        current = candidate
        if not result.feasible:
            state.bound_reached = True
            state.stop_reason = ("the qp feasibility bound was reached; tracking stopped at the best "
                                 "feasible step")
            break
        if state.reached(current.target, spec.method.target_tolerance):
            # Checked here too, so a goal reached by the last allowed step is not reported as the
            # iteration budget running out.
            state.stop_reason = "goal reached"
            break


def _interpolate(original: dict[str, torch.Tensor], corrected: dict[str, torch.Tensor], scale: float,
                 ) -> dict[str, torch.Tensor]:
    """Parameters a fraction ``scale`` of the way from ``original`` to ``corrected``."""
    out = {}
    for key, start in original.items():
        end = corrected[key]
        if start.is_floating_point():
            out[key] = (start.double() + scale * (end.double() - start.double())).to(start.dtype)
        else:
            out[key] = end.clone() if scale == 1.0 else start.clone()
    return out


def guarded_network_step(scope: CorrectionScope, train: Dataset, spec: CorrectionSpec, targets: AuditTargets,
                         clock: StageClock, state: Tracking, start: Measurement,
                         known: StartInfluence | None = None) -> HeadModel | None:
    """Network methods: weights at the input model, one method run, then the guard; a rejected
    run is shortened along the straight line from the input parameters. None: nothing accepted.
    ``known``: the influence at ``start``, if already computed."""
    from workers.engine.unlearning.methods.base import NetworkTask
    from workers.engine.unlearning.methods.registry import apply_network_method

    assert spec.method.name not in HEAD_METHODS
    result, solver = _solve(scope, spec, clock, state, start.target, True, 0.2, known)
    model = scope.current_model()
    with clock.stage("unlearn", 0.3):
        trainable = copy.deepcopy(model.network)
        for parameter in trainable.parameters():
            parameter.requires_grad_(True)
        task = NetworkTask(
            arch=model.arch, network=trainable, original=model.network,
            features=torch.as_tensor(train.features, device=model.device, dtype=model.dtype),
            labels=torch.as_tensor(train.labels, device=model.device, dtype=model.dtype),
            eps=torch.from_numpy(result.eps).to(model.device), config=spec.method, seed=spec.seed)
        outcome = apply_network_method(task)
        attempts: list[dict[str, Any]] = []
        scale = 1.0
        for _ in range(spec.guard.line_search_steps + 1):
            shortened = _interpolate(model.state, model.arch.to_external(outcome.state), scale)
            candidate_model = HeadModel.from_state(model.arch, shortened, model.device)
            candidate = measure(candidate_model, targets)
            reason = rejection(candidate, start, state.origin, spec.guard, spec.objective.utility_tolerance,
                               None)
            attempts.append({"scale": scale, "rejected": reason})
            if reason is None:
                step = result.scaled(scale)
                state.solved.append(step)
                state.records.append(_record(1, start, candidate, step, step.notes + outcome.notes,
                                             {**solver, "method_diagnostics": outcome.diagnostics}, attempts))
                state.stop_reason = "one network-method step"
                return candidate_model
            scale /= 2
    state.undone.append({"iteration": 1, "attempts": attempts,
                         "predicted_target_change": result.predicted_target_change})
    state.stop_reason = f"the method's step was undone at every step length: {attempts[0]['rejected']}"
    return None

