"""One correction job, stage by stage: load → polish → influence → weights → unlearn → evaluate.

The CLI calls this in-process; the RQ worker calls the same functions with files it took from
the store. Nothing here knows about HTTP, queues or Redis.
"""

from __future__ import annotations

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
from workers.engine.attacks import adversarial_design
from workers.engine.checkpoint import load_checkpoint, save_checkpoint
from workers.engine.config import AttackConfig, CorrectionSpec
from workers.engine.data import (
    Dataset,
    DatasetSchema,
    check_groups_present,
    load_dataset,
    read_columns,
    resolve_features,
)
from workers.engine.errors import CorrectionCanceled, DatasetError, InputError
from workers.engine.evaluation import SplitContext, attack_label, evaluate_split
from workers.engine.influence import HeadProblem, factorize, fit_head, hessian, influences
from workers.engine.model import HeadModel, pick_device
from workers.engine.objectives import GroupGap, MeanLogLoss, Objective
from workers.engine.report import build_report, render_html
from workers.engine.unlearning import apply_step
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
    """The corrected state dict (same keys, shapes, dtypes) and the report."""

    state: dict[str, torch.Tensor]
    report: dict[str, Any]


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
    problem: HeadProblem
    target: Objective
    utility: MeanLogLoss
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


def _to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(values).to(device, torch.float64)


def _setup(inputs: CorrectionInputs, spec: CorrectionSpec, device: torch.device) -> _Setup:
    model = HeadModel.from_state(inputs.arch, inputs.state, device)
    sensitive = spec.objective.sensitive_attribute or next(iter(inputs.train.sensitive))
    privileged = spec.objective.privileged_group
    cfg = spec.influence
    problem = HeadProblem(model.design(inputs.train.features), _to_device(inputs.train.labels, device),
                          cfg.l2_reg, cfg.damping, cfg.chunk_size)
    audit = inputs.audit
    audit_design = model.design(audit.features)
    audit_labels = _to_device(audit.labels, device)
    target: Objective
    if spec.objective.metric == "robustness":
        adversarial = adversarial_design(model, model.theta(), audit.features, audit.labels,
                                         spec.objective.attack)
        target = MeanLogLoss(adversarial, audit_labels, name="robustness")
    else:
        target = GroupGap.build(spec.objective.metric, audit_design, audit.labels,
                                audit.sensitive[sensitive], privileged, "audit")
    attacks = _attacks(spec)
    splits = {"audit": audit, **({"eval": inputs.eval} if inputs.eval is not None else {})}
    contexts = {name: SplitContext.prepare(model, data, sensitive, privileged, attacks)
                for name, data in splits.items()}
    return _Setup(model, problem, target, MeanLogLoss(audit_design, audit_labels), sensitive, contexts)


def _iteration_record(index: int, target_before: float, target_after: float, utility_before: float,
                      utility_after: float, weights: WeightResult, notes: list[str]) -> dict[str, Any]:
    return {
        "iteration": index,
        "target_before": target_before,
        "target_predicted": target_before - np.sign(target_before) * weights.requested_reduction
        if weights.scheme != "hard" else target_before + np.sign(target_before)
        * weights.predicted_target_change,
        "target_after": target_after,
        "predicted_target_change": weights.predicted_target_change,
        "realized_target_change": abs(target_after) - abs(target_before),
        "predicted_utility_change": weights.predicted_utility_change,
        "realized_utility_change": utility_after - utility_before,
        "utility_before": utility_before,
        "utility_after": utility_after,
        "notes": notes,
    }


def _correct(setup: _Setup, spec: CorrectionSpec, run: _Run, theta: torch.Tensor,
             ) -> tuple[torch.Tensor, list[dict[str, Any]], list[WeightResult], torch.Tensor]:
    """Target tracking: influence → weights → step, until the audit target reaches the request."""
    problem, method = setup.problem, spec.method
    weights = torch.ones(problem.n, dtype=torch.float64, device=theta.device)
    initial = abs(setup.target.evaluate(theta)[0])
    goal = (1 - spec.objective.reduction) * initial
    budget = 1 if spec.weighting.scheme == "hard" else method.max_iterations
    tau_left = spec.objective.utility_tolerance
    records: list[dict[str, Any]] = []
    solved: list[WeightResult] = []
    for index in range(budget):
        value, target_grad = setup.target.evaluate(theta)
        if index > 0 and abs(value) <= goal + method.target_tolerance * initial:
            break
        fraction = 0.2 + 0.5 * index / budget
        with run.stage("influence", fraction):
            factor = factorize(hessian(problem, theta, weights), "influence")
            utility, utility_grad = setup.utility.evaluate(theta)
            sign = 1.0 if value >= 0 else -1.0
            a = sign * influences(problem, theta, factor.solve(target_grad, "influence"))
            b = influences(problem, theta, factor.solve(utility_grad, "influence"))
        with run.stage("weights", fraction + 0.1 / budget):
            result = solve_weights(a.cpu().numpy(), b.cpu().numpy(), abs(value) - goal, spec.weighting,
                                   tau_left, (weights - 1).cpu().numpy())
        with run.stage("unlearn", fraction + 0.2 / budget):
            step = apply_step(problem, theta, weights, result.eps, factor, method)
        theta, weights = step.theta, step.weights
        tau_left = max(0.0, tau_left - max(0.0, result.predicted_utility_change))
        records.append(_iteration_record(index + 1, value, setup.target.evaluate(theta)[0], utility,
                                         setup.utility.evaluate(theta)[0], result,
                                         result.notes + step.notes))
        solved.append(result)
    return theta, records, solved, weights


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
        theta, polish = fit_head(setup.problem, setup.model.theta(),
                                 torch.ones(setup.problem.n, dtype=torch.float64, device=chosen),
                                 spec.influence.polish_tolerance, spec.influence.polish_max_steps, "polish")
    theta, iterations, solved, weights = _correct(setup, spec, run, theta)
    with run.stage("evaluate", 0.75):
        corrected = setup.model.with_theta(theta)
        before = {name: evaluate_split(setup.model, ctx) for name, ctx in setup.contexts.items()}
        after = {name: evaluate_split(corrected, ctx) for name, ctx in setup.contexts.items()}
    with run.stage("report", 0.97):
        report = build_report(
            spec=spec, inputs=inputs, sensitive=setup.sensitive, before=before, after=after,
            iterations=iterations, weights=solved, final_weights=weights.cpu().numpy(),
            polish=polish.to_dict(), timings=run.timings, device=str(chosen),
        )
    report["timings"]["total"] = time.perf_counter() - started
    run.progress("done", 1.0)
    return CorrectionResult(state=corrected.state, report=report)


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
