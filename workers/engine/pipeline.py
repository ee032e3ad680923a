"""One correction job, stage by stage: load → polish → influence → weights → unlearn → evaluate.

The CLI calls this in-process; the RQ worker calls the same functions with files it took from
the store. Nothing here knows about HTTP, queues or Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workers.engine.config import HEAD_METHODS, AttackConfig, CorrectionSpec, check_compatibility
from workers.engine.errors import InputError
from workers.engine.evaluation.metrics import (
    SplitContext,
    attack_label,
    classification_metrics,
    evaluate_split,
)
from workers.engine.evaluation.provenance import new_report_id, provenance, tool_version
from workers.engine.evaluation.report import build_report
from workers.engine.evaluation.robust_sample import draw_robust_sample
from workers.engine.evaluation.verdict import assess
from workers.engine.influence.scopes import CorrectionScope, HeadScope
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.datasets import Dataset
from workers.engine.io.feature_matrix import RowTransform
from workers.engine.io.identity import checkpoint_metadata
from workers.engine.io.inputs import CorrectionInputs, TrainEmbedding, load_inputs
from workers.engine.models.design import blas_threads_like_torch
from workers.engine.models.head_model import HeadModel, pick_device
from workers.engine.models.reference import check_reference_logits
from workers.engine.objectives.targets import AuditTargets, acceptance_attack
from workers.engine.progress import ProgressCallback, StageClock
from workers.engine.unlearning.frontier import Frontier, compute_frontier, skipped_frontier
from workers.engine.unlearning.tracking import (
    Measurement,
    StartInfluence,
    Tracking,
    guarded_network_step,
    influence_at,
    measure,
    track_head,
)

__all__ = [
    "CorrectionInputs",
    "CorrectionResult",
    "ProgressCallback",
    "load_inputs",
    "run_correction",
    "train_embedding",
]

@dataclass
class CorrectionResult:
    """The corrected state dict (same keys, shapes, dtypes), the report, and the per-sample
    effective weights 1 + ε of the training rows (summed over tracking iterations)."""

    state: dict[str, torch.Tensor]
    report: dict[str, Any]
    weights: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    """The corrected checkpoint's safetensors metadata: architecture, feature names, parent."""


@dataclass
class _Setup:
    model: HeadModel
    scope: CorrectionScope
    targets: AuditTargets
    sensitive: str
    contexts: dict[str, SplitContext]
    notes: list[str] = field(default_factory=list)


def _attacks(spec: CorrectionSpec) -> list[AttackConfig]:
    attacks: list[AttackConfig] = []
    if spec.objective.metric == "robustness":
        attacks.append(spec.objective.attack)
    acceptance = acceptance_attack(spec)
    extra = [a for a in (acceptance, spec.evaluation.attack if spec.evaluation.robustness else None) if a]
    for attack in extra:
        if all(attack_label(a) != attack_label(attack) for a in attacks):
            attacks.append(attack)
    return attacks


def train_embedding(spec: CorrectionSpec, device: str | None = None) -> TrainEmbedding | None:
    """How :func:`load_inputs` should read the training rows for ``spec``: through the model's
    extractor (on ``device``), so that only φ(x) is held, when the job never needs the inputs
    again — head scope with a head method; None otherwise. Logistic regression has no extractor
    and reads its inputs (they are φ)."""
    if _needs_inputs(spec) is not None:
        return None
    chosen = pick_device(device)

    def embedding(arch: ArchSpec, state: dict[str, torch.Tensor]) -> RowTransform | None:
        if arch.head_index == 0:
            return None
        return HeadModel.from_state(arch, state, chosen).embedding()
    return embedding


def _needs_inputs(spec: CorrectionSpec) -> str | None:
    """What in ``spec`` needs the training inputs themselves, if anything."""
    if spec.influence.scope == "full":
        return "influence.scope 'full'"
    if spec.method.name not in HEAD_METHODS:
        return f"method {spec.method.name!r}"
    return None


def _make_scope(model: HeadModel, inputs: CorrectionInputs, targets: AuditTargets,
                spec: CorrectionSpec) -> CorrectionScope:
    needs = _needs_inputs(spec)
    if inputs.train.embedded and needs is not None:
        raise ValueError(f"{needs} needs the training inputs, but they were read as head features "
                         "(load_inputs with embed_train=train_embedding(spec) for this spec)")
    if spec.influence.scope == "full":
        from workers.engine.influence.full_scope import FullScope

        return FullScope(model, inputs.train.features, inputs.train.labels, targets, spec)
    return HeadScope(model, inputs.train.features, inputs.train.labels, targets, spec, inputs.train.embedded)


def _setup(inputs: CorrectionInputs, spec: CorrectionSpec, device: torch.device) -> _Setup:
    try:
        check_compatibility(spec, len(inputs.arch.trainable_units), inputs.arch.unit_description)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    model = HeadModel.from_state(inputs.arch, inputs.state, device)
    splits = [data for data in (inputs.train, inputs.audit, inputs.eval) if data is not None]
    # Splits that hold their inputs go first: a mismatch there can name the activation that
    # would match, which rows read as head features cannot.
    agreeing = {data.name for data in sorted(splits, key=lambda data: data.embedded)
                if check_reference_logits(model, data) is not None}
    notes = [f"{data.name}: the rebuilt model reproduces the reference logits in column "
             f"{data.reference_column!r}" for data in splits if data.name in agreeing]
    sensitive = spec.objective.sensitive_attribute or next(iter(inputs.train.sensitive))
    model.keep_design(inputs.audit.features)
    targets = AuditTargets.prepare(model, inputs.audit, spec, sensitive)
    attacks = _attacks(spec)
    contexts = {name: SplitContext.prepare(
                    model, data, sensitive, spec.objective.privileged_group, attacks,
                    draw_robust_sample(data.sensitive[sensitive], spec.evaluation.robust_sample_rows,
                                       spec.seed, name) if attacks else None,
                    spec.evaluation.robust_early_stop)
                for name, data in _splits(inputs).items()}
    return _Setup(model, _make_scope(model, inputs, targets, spec), targets, sensitive, contexts, notes)


def _splits(inputs: CorrectionInputs) -> dict[str, Dataset]:
    return {"audit": inputs.audit, **({"eval": inputs.eval} if inputs.eval is not None else {})}


def _polish_effect_on_eval(setup: _Setup, polish: dict[str, Any]) -> None:
    """Add the polish's effect on the eval split to its report (reported, never used to decide)."""
    context = setup.contexts.get("eval")
    polished = getattr(setup.scope, "polished_theta", None)
    if context is None or polished is None:
        return
    rows = {}
    for when, model in (("before", setup.model), ("after", setup.model.with_theta(polished))):
        proba = torch.sigmoid(model.head_logits(context.data.features)).cpu().numpy()
        metrics = classification_metrics(proba, context.data.labels, context.groups)
        rows[f"accuracy_{when}"] = metrics["accuracy"]
        rows[f"log_loss_{when}"] = metrics["log_loss"]
    polish["eval"] = rows


def _correct(setup: _Setup, inputs: CorrectionInputs, spec: CorrectionSpec, clock: StageClock,
             state: Tracking, start: Measurement, known: StartInfluence | None) -> HeadModel:
    """The guarded correction; the input model itself when no step passes the guard."""
    if spec.method.name in HEAD_METHODS:
        track_head(setup.scope, spec, setup.targets, clock, state, start, known)
        corrected = setup.scope.current_model() if state.records else None
    else:
        corrected = guarded_network_step(setup.scope, inputs.train, spec, setup.targets, clock, state, start,
                                         known)
    return corrected if corrected is not None else setup.model


def _frontier(setup: _Setup, spec: CorrectionSpec, clock: StageClock, origin: Measurement,
              state: Tracking) -> tuple[Measurement, StartInfluence | None, Frontier]:
    """The influence at the correction's start, computed once, and the frontier from it."""
    start = measure(setup.scope.current_model(), setup.targets)
    with clock.stage("influence", 0.17):
        known = influence_at(setup.scope, start.target) if not state.reached(
            start.target, spec.method.target_tolerance) else None
    with clock.stage("frontier", 0.18):
        if known is None:
            frontier = skipped_frontier(spec, "the input model already meets the goal")
        else:
            frontier = compute_frontier(setup.scope, spec, setup.targets, setup.contexts, known, origin,
                                        start)
    return start, known, frontier


def run_correction(inputs: CorrectionInputs, spec: CorrectionSpec,
                   progress: ProgressCallback | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   device: str | None = None, job_id: str | None = None) -> CorrectionResult:
    """Run one correction job in-process.

    Args:
        inputs: from :func:`load_inputs`.
        spec: the resolved job specification.
        progress: called with (stage, overall fraction in [0, 1]) as stages start.
        should_cancel: polled between stages; True raises :class:`CorrectionCanceled`.
        device: ``cpu``/``cuda``; default CUDA when available.
        job_id: the service's job id, recorded in the report's provenance (None: a CLI run).
    """
    with blas_threads_like_torch():
        return _run_correction(inputs, spec, progress, should_cancel, device, job_id)


def _run_correction(inputs: CorrectionInputs, spec: CorrectionSpec, progress: ProgressCallback | None,
                    should_cancel: Callable[[], bool] | None, device: str | None,
                    job_id: str | None) -> CorrectionResult:
    torch.manual_seed(spec.seed)
    report_id = new_report_id()
    clock = StageClock(progress, should_cancel)
    started = time.perf_counter()
    chosen = pick_device(device)
    with clock.stage("load", 0.02):
        setup = _setup(inputs, spec, chosen)
        origin = measure(setup.model, setup.targets)
    with clock.stage("polish", 0.15):
        polish = setup.scope.polish()
        _polish_effect_on_eval(setup, polish)
    initial = abs(origin.target)
    state = Tracking(goal=(1 - spec.objective.reduction) * initial, initial=initial,
                     tau_left=spec.objective.utility_tolerance, origin=origin)
    start, known, frontier = _frontier(setup, spec, clock, origin, state)
    corrected = _correct(setup, inputs, spec, clock, state, start, known)
    with clock.stage("evaluate", 0.75):
        final = measure(corrected, setup.targets) if state.records else origin
        before = {name: evaluate_split(setup.model, ctx) for name, ctx in setup.contexts.items()}
        after = {name: evaluate_split(corrected, ctx) for name, ctx in setup.contexts.items()}
        verdict = assess(spec, _splits(inputs), inputs.train, setup.sensitive, before, after, state,
                         final.target, polish)
    final_weights = 1.0 + sum((r.eps for r in state.solved), np.zeros(inputs.train.n))
    with clock.stage("report", 0.97):
        report = build_report(
            spec=spec, inputs=inputs, sensitive=setup.sensitive,
            before={name: e.metrics for name, e in before.items()},
            after={name: e.metrics for name, e in after.items()},
            state=state, final=final, verdict=verdict, final_weights=final_weights,
            polish=polish, timings=clock.timings, device=str(chosen), extra_notes=setup.notes,
            frontier=frontier, provenance=provenance(inputs, spec, str(chosen), report_id, job_id=job_id),
        )
    report["timings"]["total"] = time.perf_counter() - started
    clock.progress("done", 1.0)
    metadata = checkpoint_metadata(inputs.arch, inputs.train.feature_names, inputs.model_sha256,
                                   report_id=report_id, version=tool_version())
    return CorrectionResult(state=corrected.state, report=report, weights=final_weights, metadata=metadata)
