"""One correction job, stage by stage: load → polish → influence → weights → unlearn → evaluate.

The CLI calls this in-process; the RQ worker calls the same functions with files it took from
the store. Nothing here knows about HTTP, queues or Redis.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.architecture import ArchSpec
from workers.engine.checkpoint import load_checkpoint, save_checkpoint
from workers.engine.config import HEAD_METHODS, AttackConfig, CorrectionSpec, check_compatibility
from workers.engine.data import (
    Dataset,
    DatasetSchema,
    check_groups_present,
    load_dataset,
    read_columns,
    resolve_features,
)
from workers.engine.errors import CorrectionCanceled, DatasetError, InfeasibleError, InputError
from workers.engine.evaluation import SplitContext, attack_label, evaluate_split
from workers.engine.model import HeadModel, pick_device
from workers.engine.report import build_report, render_html
from workers.engine.scopes import CorrectionScope, HeadScope
from workers.engine.targets import AuditTargets
from workers.engine.weights import WeightResult, solve_weights

__all__ = [
    "CorrectionInputs",
    "CorrectionResult",
    "ProgressCallback",
    "load_inputs",
    "run_correction",
    "write_outputs",
]

ProgressCallback = Callable[[str, float], None]
OUTPUT_MODE = 0o644
MIN_PROGRESS_RATIO = 0.5
"""A tracking iteration must realize at least this fraction of its predicted target reduction."""
STAGES = ("load", "polish", "influence", "weights", "unlearn", "evaluate", "report")


@dataclass
class CorrectionInputs:
    """Validated inputs of a job: architecture, checkpoint tensors and datasets."""

    arch: ArchSpec
    state: dict[str, torch.Tensor]
    train: Dataset
    audit: Dataset
    eval: Dataset | None
    notes: list[str] = field(default_factory=list)


@dataclass
class CorrectionResult:
    """The corrected state dict (same keys, shapes, dtypes), the report, and the per-sample
    effective weights 1 + ε of the training rows (summed over tracking iterations)."""

    state: dict[str, torch.Tensor]
    report: dict[str, Any]
    weights: np.ndarray


def _with_sensitive_features(path: Path, schema: DatasetSchema, arch: ArchSpec,
                             notes: list[str]) -> DatasetSchema:
    """Let numeric sensitive columns be features when that is what makes the model's width fit."""
    if schema.features is not None:
        return schema
    columns = read_columns(path)
    features = resolve_features(columns, schema)
    if len(features) == arch.in_features:
        return schema
    widened = [c for c in columns if c != schema.label and (c in features or c in schema.sensitive)]
    if len(widened) == arch.in_features:
        notes.append(f"sensitive column(s) {list(schema.sensitive)} are also used as model features, "
                     f"since the model takes {arch.in_features} inputs")
        return DatasetSchema(schema.label, schema.sensitive, tuple(widened))
    raise InputError(
        f"the model takes {arch.in_features} input features but {path.name} has {len(features)} "
        f"feature columns (all but label {schema.label!r} and sensitive {list(schema.sensitive)}); "
        "name the feature columns explicitly (schema 'features' / --features)"
    )


def load_inputs(model_path: Path, arch: ArchSpec, train: tuple[Path, DatasetSchema],
                audit: tuple[Path, DatasetSchema], eval: tuple[Path, DatasetSchema] | None,
                sensitive_attribute: str | None) -> CorrectionInputs:
    """Load and cross-check the checkpoint and datasets of a job.

    Raises:
        InputError: (and its CheckpointError/DatasetError subclasses) naming what to change.
    """
    state = load_checkpoint(model_path, arch)
    notes: list[str] = []
    loaded: dict[str, Dataset] = {}
    for role, pair in (("train", train), ("audit", audit), ("eval", eval)):
        if pair is None:
            continue
        path, schema = pair
        schema = _with_sensitive_features(Path(path), schema, arch, notes)
        loaded[role] = load_dataset(path, schema, role)
    reference = loaded["train"]
    for role, data in loaded.items():
        if data.feature_names != reference.feature_names:
            raise DatasetError(f"{role}: feature columns differ from train's; every split needs the "
                               "same feature columns in the same order")
    if sensitive_attribute is not None:
        if sensitive_attribute not in reference.sensitive:
            raise DatasetError(f"sensitive attribute {sensitive_attribute!r} is not a sensitive column "
                               f"of the schema; it lists {sorted(reference.sensitive)}")
        for data in loaded.values():
            check_groups_present(reference, data, sensitive_attribute)
    return CorrectionInputs(arch, state, loaded["train"], loaded["audit"], loaded.get("eval"),
                            sorted(set(notes)))


class _Run:
    """Progress, cancellation and timing of one job."""

    def __init__(self, progress: ProgressCallback | None, should_cancel: Callable[[], bool] | None):
        self.progress = progress or (lambda stage, fraction: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, fraction: float) -> Iterator[None]:
        if self.should_cancel():
            raise CorrectionCanceled(f"canceled before stage '{name}'")
        self.progress(name, fraction)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _Setup:
    model: HeadModel
    scope: CorrectionScope
    targets: AuditTargets
    sensitive: str
    contexts: dict[str, SplitContext]


def _attacks(spec: CorrectionSpec) -> list[AttackConfig]:
    attacks: list[AttackConfig] = []
    if spec.objective.metric == "robustness":
        attacks.append(spec.objective.attack)
    if spec.evaluation.robustness and all(attack_label(a) != attack_label(spec.evaluation.attack)
                                          for a in attacks):
        attacks.append(spec.evaluation.attack)
    return attacks


def _make_scope(model: HeadModel, inputs: CorrectionInputs, targets: AuditTargets,
                spec: CorrectionSpec) -> CorrectionScope:
    if spec.influence.scope == "full":
        from workers.engine.full_scope import FullScope

        return FullScope(model, inputs.train.features, inputs.train.labels, targets, spec)
    return HeadScope(model, inputs.train.features, inputs.train.labels, targets, spec)


def _setup(inputs: CorrectionInputs, spec: CorrectionSpec, device: torch.device) -> _Setup:
    try:
        check_compatibility(spec, len(inputs.arch.linear_indices))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    model = HeadModel.from_state(inputs.arch, inputs.state, device)
    sensitive = spec.objective.sensitive_attribute or next(iter(inputs.train.sensitive))
    targets = AuditTargets.prepare(model, inputs.audit, spec, sensitive)
    splits = {"audit": inputs.audit, **({"eval": inputs.eval} if inputs.eval is not None else {})}
    contexts = {name: SplitContext.prepare(model, data, sensitive, spec.objective.privileged_group,
                                           _attacks(spec))
                for name, data in splits.items()}
    return _Setup(model, _make_scope(model, inputs, targets, spec), targets, sensitive, contexts)


def _iteration_record(index: int, target: tuple[float, float], utility: tuple[float, float],
                      weights: WeightResult, notes: list[str], solver: dict[str, Any]) -> dict[str, Any]:
    before, after = target
    return {
        "iteration": index,
        "target_before": before,
        "target_after": after,
        "predicted_target_change": weights.predicted_target_change,
        "realized_target_change": abs(after) - abs(before),
        "utility_before": utility[0],
        "utility_after": utility[1],
        "predicted_utility_change": weights.predicted_utility_change,
        "realized_utility_change": utility[1] - utility[0],
        "solver": solver,
        "notes": notes,
    }


@dataclass
class _Tracking:
    """The state of a correction across tracking iterations."""

    goal: float
    initial: float
    tau_left: float
    records: list[dict[str, Any]] = field(default_factory=list)
    solved: list[WeightResult] = field(default_factory=list)


def _influence_and_weights(scope: CorrectionScope, target: tuple[float, torch.Tensor], spec: CorrectionSpec,
                           run: _Run, state: _Tracking, fraction: float,
                           ) -> tuple[WeightResult, float, float, dict[str, Any]]:
    value, target_grad = target
    with run.stage("influence", fraction):
        solver = scope.prepare()
        utility, utility_grad = scope.utility()
        sign = 1.0 if value >= 0 else -1.0
        a = sign * scope.influences(target_grad)
        b = scope.influences(utility_grad)
    with run.stage("weights", fraction + 0.05):
        try:
            result = solve_weights(a, b, abs(value) - state.goal, spec.weighting, state.tau_left,
                                   (scope.weights - 1).cpu().numpy())
        except InfeasibleError as exc:
            reachable = (state.initial - abs(value) + exc.max_reduction) / state.initial
            raise InfeasibleError(f"{exc} (as a fraction of the audit target: objective.reduction "
                                  f"at most {max(reachable, 0.0):.3f})", exc.max_reduction) from exc
    state.tau_left = max(0.0, state.tau_left - max(0.0, result.predicted_utility_change))
    state.solved.append(result)
    return result, value, utility, solver


def _track(scope: CorrectionScope, spec: CorrectionSpec, run: _Run, state: _Tracking) -> HeadModel:
    """Head methods: influence → weights → step, repeated until the audit target is reached.

    A tracking iteration (after the first) whose realized target reduction is below
    ``MIN_PROGRESS_RATIO`` of the first-order prediction is undone and tracking stops: the
    linearization no longer describes the model there, and further steps only trade utility
    for little or no target progress.
    """
    budget = 1 if spec.weighting.scheme == "hard" else spec.method.max_iterations
    current = scope.target()
    for index in range(budget):
        if index > 0 and abs(current[0]) <= state.goal + spec.method.target_tolerance * state.initial:
            break
        fraction = 0.2 + 0.5 * index / budget
        snapshot = scope.snapshot()
        result, value, utility, solver = _influence_and_weights(scope, current, spec, run, state, fraction)
        with run.stage("unlearn", fraction + 0.1):
            notes = scope.step(result.eps, spec.method)
        current = scope.target()
        after = current[0]
        realized, predicted = abs(value) - abs(after), -result.predicted_target_change
        if index > 0 and realized < MIN_PROGRESS_RATIO * predicted:
            scope.restore(snapshot)
            state.solved.pop()
            state.records[-1]["notes"].append(
                f"tracking stopped: iteration {index + 1} realized a target reduction of {realized:.4g} "
                f"against {predicted:.4g} predicted and was undone")
            break
        state.records.append(_iteration_record(index + 1, (value, after), (utility, scope.utility()[0]),
                                               result, result.notes + notes, solver))
    return scope.current_model()


def _network_step(setup: _Setup, inputs: CorrectionInputs, spec: CorrectionSpec, run: _Run,
                  state: _Tracking) -> HeadModel:
    """Network methods: weights from the influence at the original model, then one method run."""
    from workers.engine.methods.base import NetworkTask
    from workers.engine.methods.registry import apply_network_method

    result, value, utility, solver = _influence_and_weights(setup.scope, setup.scope.target(), spec, run,
                                                            state, 0.2)
    model = setup.scope.current_model()
    with run.stage("unlearn", 0.3):
        trainable = copy.deepcopy(model.network)
        for parameter in trainable.parameters():
            parameter.requires_grad_(True)
        task = NetworkTask(
            arch=inputs.arch, network=trainable.train(), original=model.network,
            features=torch.as_tensor(inputs.train.features, device=model.device, dtype=model.dtype),
            labels=torch.as_tensor(inputs.train.labels, device=model.device, dtype=model.dtype),
            eps=torch.from_numpy(result.eps).to(model.device), config=spec.method, seed=spec.seed)
        outcome = apply_network_method(task)
        corrected = HeadModel.from_state(inputs.arch, outcome.state, model.device)
    target, utility_objective = setup.targets.for_model(corrected)
    theta = corrected.theta()
    state.records.append(_iteration_record(
        1, (value, target.evaluate(theta)[0]), (utility, utility_objective.evaluate(theta)[0]), result,
        result.notes + outcome.notes, {**solver, "method_diagnostics": outcome.diagnostics}))
    return corrected


def run_correction(inputs: CorrectionInputs, spec: CorrectionSpec,
                   progress: ProgressCallback | None = None,
                   should_cancel: Callable[[], bool] | None = None,
                   device: str | None = None) -> CorrectionResult:
    """Run one correction job in-process.

    Args:
        inputs: from :func:`load_inputs`.
        spec: the resolved job specification.
        progress: called with (stage, overall fraction in [0, 1]) as stages start.
        should_cancel: polled between stages; True raises :class:`CorrectionCanceled`.
        device: ``cpu``/``cuda``; default CUDA when available.
    """
    torch.manual_seed(spec.seed)
    run = _Run(progress, should_cancel)
    started = time.perf_counter()
    chosen = pick_device(device)
    with run.stage("load", 0.02):
        setup = _setup(inputs, spec, chosen)
    with run.stage("polish", 0.15):
        polish = setup.scope.polish()
    initial = abs(setup.scope.target()[0])
    state = _Tracking(goal=(1 - spec.objective.reduction) * initial, initial=initial,
                      tau_left=spec.objective.utility_tolerance)
    if spec.method.name in HEAD_METHODS:
        corrected = _track(setup.scope, spec, run, state)
    else:
        corrected = _network_step(setup, inputs, spec, run, state)
    with run.stage("evaluate", 0.75):
        before = {name: evaluate_split(setup.model, ctx) for name, ctx in setup.contexts.items()}
        after = {name: evaluate_split(corrected, ctx) for name, ctx in setup.contexts.items()}
    final_weights = 1.0 + sum((r.eps for r in state.solved), np.zeros(inputs.train.n))
    with run.stage("report", 0.97):
        report = build_report(
            spec=spec, inputs=inputs, sensitive=setup.sensitive, before=before, after=after,
            iterations=state.records, weights=state.solved, final_weights=final_weights,
            polish=polish, timings=run.timings, device=str(chosen),
        )
    report["timings"]["total"] = time.perf_counter() - started
    run.progress("done", 1.0)
    return CorrectionResult(state=corrected.state, report=report, weights=final_weights)


def _staged(path: Path) -> Path:
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    os.chmod(tmp, OUTPUT_MODE)
    return Path(tmp)


def write_outputs(result: CorrectionResult, out_dir: Path) -> dict[str, Path]:
    """Write ``model.safetensors``, ``report.json`` and ``report.html``.

    All three are written to temporary files first and renamed into place only when every one
    was written, so a failure leaves no partial output.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("model.safetensors", "report.json", "report.html")}
    staged = {name: _staged(path) for name, path in paths.items()}
    try:
        save_checkpoint(result.state, staged["model.safetensors"])
        staged["report.json"].write_text(json.dumps(result.report, indent=2, allow_nan=False),
                                         encoding="utf-8")
        staged["report.html"].write_text(render_html(result.report), encoding="utf-8")
        for name, path in paths.items():
            os.replace(staged[name], path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return paths
