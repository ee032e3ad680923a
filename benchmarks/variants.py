"""The benchmark's configurations, as data: one :class:`Variant` per table row.

To add a row, append a :class:`Variant` to :data:`VARIANTS` (or build one with the helpers
below). An ``engine`` variant is a partial job spec (the same JSON shape as ``--spec`` /
``POST /v1/jobs``) merged over the benchmark's base spec; a ``retrain`` variant names the spec
whose final per-sample weights are used to retrain the whole MLP from scratch; a ``fairlearn``
variant carries the ``eps`` of ``ExponentiatedGradient``; ``logreg`` is its unconstrained base
estimator.

Each variant belongs to one ``table``: ``main`` (soft vs hard, retraining, Fairlearn; issue 2),
``methods`` (every unlearning method with hard and soft weights, robust evaluation on; issue 4)
or ``robustness`` (the objective ``robustness`` against an adaptive PGD attack: newton with
every scheme, and hard vs soft for the other methods).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.engine_runs import merge
from workers.engine.config import HEAD_METHODS

__all__ = [
    "EQUAL_DP_RHOS",
    "HARD_K",
    "METHODS",
    "NETWORK_METHODS",
    "ROBUSTNESS_ATTACK",
    "ROBUSTNESS_HARD_K",
    "ROBUSTNESS_METHODS",
    "ROBUSTNESS_QP_TOLERANCE",
    "ROBUSTNESS_RHO",
    "SOFT_RHO",
    "TABLES",
    "VARIANTS",
    "Kind",
    "Table",
    "Variant",
    "engine_variant",
    "method_available",
    "select",
]

Kind = Literal["original", "engine", "retrain", "fairlearn", "logreg"]
Table = Literal["main", "methods", "robustness"]
TABLES: tuple[Table, ...] = ("main", "methods", "robustness")

NETWORK_METHODS = ("retrain_last_k", "finetune", "gradient_ascent", "scrub", "fisher", "bad_teacher")
"""``method.name`` values of the whole-network methods (issue 4); rows for them are listed below
and report 'not available' until the engine registers the method."""


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark table.

    Attributes:
        name: the row label.
        kind: how the row is produced (see the module docstring).
        family: a grouping for the commentary: original, soft, hard, retrain, fairlearn, network.
        spec: partial job spec (``engine``: the correction; ``retrain``: the correction whose
            final weights are used).
        params: numeric settings of a baseline (``retrain``: ``seed``; ``fairlearn``: ``eps``).
        quick: whether ``--quick`` runs it.
        table: the table the row belongs to (see the module docstring).
    """

    name: str
    kind: Kind
    family: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, float] = field(default_factory=dict)
    quick: bool = False
    table: Table = "main"

    @property
    def method(self) -> str:
        """The unlearning method of an engine/retrain row (``newton`` by default)."""
        method = self.spec.get("method", {})
        name = method.get("name", "newton") if isinstance(method, Mapping) else "newton"
        return str(name)


def engine_variant(name: str, scheme: str, method: str = "newton", *, family: str = "soft",
                   quick: bool = False, table: Table = "main", robust_eval: bool = False,
                   extra: Mapping[str, Any] | None = None, **fields: Any) -> Variant:
    """An engine row: ``scheme`` + ``method``, plus ``reduction`` / ``k_fraction`` / bounds.

    ``fields`` may hold ``reduction`` (objective), ``k_fraction``, ``lower``, ``upper`` (weighting).
    ``robust_eval`` turns on the robust evaluation (PGD on audit and eval); ``extra`` is a partial
    job spec merged in last (e.g. another objective).
    """
    objective: dict[str, Any] = {k: fields.pop(k) for k in ("reduction",) if k in fields}
    weighting: dict[str, Any] = {"scheme": scheme}
    weighting |= {k: fields.pop(k) for k in ("k_fraction", "lower", "upper") if k in fields}
    if fields:
        raise ValueError(f"engine_variant: unknown field(s) {sorted(fields)}")
    spec: dict[str, Any] = {"weighting": weighting, "method": {"name": method}}
    if objective:
        spec["objective"] = objective
    if robust_eval:
        spec["evaluation"] = {"robustness": True}
    return Variant(name, "engine", family, merge(spec, extra or {}), quick=quick, table=table)


def _soft(rho: float, quick: bool = False) -> Variant:
    return engine_variant(f"soft-2.3 newton ρ={rho:g}", "soft-2.3", reduction=rho, quick=quick)


def _hard(k: float, quick: bool = False) -> Variant:
    return engine_variant(f"hard newton k={k:g}", "hard", family="hard", k_fraction=k, quick=quick)


SOFT_RHO = 0.6
"""ρ of the soft rows compared with hard ones (the engine's default reduction)."""
HARD_K = 0.05
"""Fraction of training samples the hard rows remove (the engine's default ``k_fraction``)."""
METHODS = (*HEAD_METHODS, *NETWORK_METHODS)
"""Every unlearning method, in the order of the method table."""
EQUAL_DP_RHOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9)
"""The ρ tried (besides :data:`SOFT_RHO`) for the method table's soft row at hard's eval DP. The
grid is wide because hard's DP varies a lot: on Bank, hard newton lands at DP ≈ 0.013, which
soft newton reaches only at ρ ≈ 0.8."""
ROBUSTNESS_RHO = 0.5
"""ρ of the robustness-objective table. Hard weights ignore ρ (they remove the k most helpful
samples in one shot); the hard row sets it only so that both rows report the same audit goal."""
ROBUSTNESS_ATTACK: Mapping[str, Any] = {"kind": "pgd", "norm": "linf", "epsilon": 0.05}
"""``objective.attack`` of the robustness table: PGD, L∞ ball of radius 0.05 (the default)."""


def _method_rows(method: str) -> tuple[Variant, ...]:
    """The method table's rows of ``method``: hard k = :data:`HARD_K`, soft ρ = :data:`SOFT_RHO`,
    and the soft ρ-sweep from which the row closest to hard's eval DP is picked."""
    quick = method == "newton"
    hard = engine_variant(f"{method}, hard k={HARD_K:g}", "hard", method, family="hard",
                          k_fraction=HARD_K, quick=quick, table="methods", robust_eval=True)
    soft = engine_variant(f"{method}, soft-2.3 ρ={SOFT_RHO:g}", "soft-2.3", method, family="soft",
                          reduction=SOFT_RHO, quick=quick, table="methods", robust_eval=True)
    sweep = (engine_variant(f"{method}, soft-2.3 ρ={rho:g}", "soft-2.3", method, family="soft ρ-sweep",
                            reduction=rho, quick=quick, table="methods", robust_eval=True)
             for rho in EQUAL_DP_RHOS)
    return hard, soft, *sweep


_ROBUSTNESS_OBJECTIVE = {"objective": {"metric": "robustness", "attack": ROBUSTNESS_ATTACK}}


ROBUSTNESS_HARD_K = (0.02, 0.05, 0.1)
"""``k_fraction`` of the robustness table's hard newton rows."""
ROBUSTNESS_QP_TOLERANCE = 0.01
"""``objective.utility_tolerance`` τ of the robustness table's qp row (box [−1, 1])."""
ROBUSTNESS_METHODS = ("refit", "finetune", "gradient_ascent", "retrain_last_k", "scrub")
"""Methods besides newton in the robustness table, each with hard k = :data:`HARD_K` and soft-2.3
ρ = :data:`ROBUSTNESS_RHO` (network methods with their default hyperparameters, one run)."""


def _robustness_row(method: str, weights: str, scheme: str, *, family: str = "soft",
                    quick: bool = False, extra: Mapping[str, Any] | None = None,
                    **fields: Any) -> Variant:
    """A robustness-table row ``"<method>, <weights>"``: objective robustness with
    :data:`ROBUSTNESS_ATTACK`, ρ = :data:`ROBUSTNESS_RHO`, robust evaluation on."""
    return engine_variant(f"{method}, {weights}", scheme, method, family=family, quick=quick,
                          table="robustness", robust_eval=True, reduction=ROBUSTNESS_RHO,
                          extra=merge(_ROBUSTNESS_OBJECTIVE, extra or {}), **fields)


def _robustness_rows() -> tuple[Variant, ...]:
    """The robustness table: newton with every scheme (hard over :data:`ROBUSTNESS_HARD_K`,
    soft-2.1, soft-2.3, qp with τ = :data:`ROBUSTNESS_QP_TOLERANCE`), soft-2.3 with one step (no
    target tracking), then hard k = :data:`HARD_K` and soft-2.3 for :data:`ROBUSTNESS_METHODS`.
    Hard weights ignore ρ (they remove the k most helpful samples in one shot); it is set only so
    that every row reports the same audit goal."""
    rho = f"ρ={ROBUSTNESS_RHO:g}"
    newton = (
        *(_robustness_row("newton", f"hard k={k:g}", "hard", family="hard", k_fraction=k,
                          quick=k == HARD_K) for k in ROBUSTNESS_HARD_K),
        _robustness_row("newton", f"soft-2.1 {rho}", "soft-2.1"),
        _robustness_row("newton", f"soft-2.3 {rho}", "soft-2.3", quick=True),
        _robustness_row("newton", f"qp [-1,1] τ={ROBUSTNESS_QP_TOLERANCE:g} {rho}", "qp",
                        extra={"objective": {"utility_tolerance": ROBUSTNESS_QP_TOLERANCE}}),
        _robustness_row("newton", f"soft-2.3 {rho}, one step (max_iterations=1)", "soft-2.3",
                        quick=True, extra={"method": {"max_iterations": 1}}),
    )
    others = (row for method in ROBUSTNESS_METHODS for row in (
        _robustness_row(method, f"hard k={HARD_K:g}", "hard", family="hard", k_fraction=HARD_K),
        _robustness_row(method, f"soft-2.3 {rho}", "soft-2.3")))
    return (*newton, *others)


VARIANTS: tuple[Variant, ...] = (
    Variant("original model", "original", "original", quick=True),
    *(_soft(rho, quick=rho in (0.6, 0.9)) for rho in (0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.9)),
    engine_variant("soft-2.3 refit ρ=0.6", "soft-2.3", "refit", reduction=0.6),
    engine_variant("qp [-1,1] refit ρ=0.6", "qp", "refit", reduction=0.6, lower=-1.0, upper=1.0,
                   quick=True),
    engine_variant("qp [-1,1] refit ρ=0.9", "qp", "refit", reduction=0.9, lower=-1.0, upper=1.0),
    *(_hard(k, quick=k == HARD_K) for k in (0.01, 0.05, 0.1, 0.2)),
    Variant(f"retrain MLP, weights soft-2.3 ρ={SOFT_RHO:g}", "retrain", "retrain",
            {"weighting": {"scheme": "soft-2.3"}, "objective": {"reduction": SOFT_RHO}},
            {"seed": 0}, quick=True),
    Variant(f"retrain MLP, weights hard k={HARD_K:g}", "retrain", "retrain",
            {"weighting": {"scheme": "hard", "k_fraction": HARD_K}}, {"seed": 0}),
    Variant("retrain MLP, unweighted, seed 1 (noise floor)", "retrain", "retrain", {}, {"seed": 1}),
    Variant("logistic regression, unconstrained (Fairlearn's base)", "logreg", "fairlearn"),
    Variant("fairlearn EG-DP eps=0.01 (default)", "fairlearn", "fairlearn", params={"eps": 0.01}),
    Variant("fairlearn EG-DP eps=0.002", "fairlearn", "fairlearn", params={"eps": 0.002}),
    *(engine_variant(f"soft-2.3 {name} ρ=0.6", "soft-2.3", name, family="network", reduction=0.6)
      for name in NETWORK_METHODS),
    *(row for method in METHODS for row in _method_rows(method)),
    *_robustness_rows(),
)
"""Every row of the full benchmark, in run order. ``retrain`` rows with an empty spec retrain
without weights (all ones) — a seed-noise reference for the retraining rows."""


def select(quick: bool, tables: Iterable[Table] = TABLES) -> list[Variant]:
    """The rows to run: those of :data:`VARIANTS` in ``tables`` (all, or only the ``quick`` ones)."""
    wanted = set(tables)
    return [v for v in VARIANTS if v.table in wanted and (v.quick or not quick)]


def method_available(name: str) -> bool:
    """Whether the engine really implements unlearning method ``name``.

    The head methods (``newton``, ``refit``) always are; a network method when
    ``workers.engine.unlearning.methods.registry.NETWORK_METHODS`` lists it. (The job spec accepts every
    name of ``MethodName``, so the spec alone proves nothing.)
    """
    if name in HEAD_METHODS:
        return True
    try:
        registry = importlib.import_module("workers.engine.unlearning.methods.registry")
    except ImportError:
        return False
    methods = getattr(registry, "NETWORK_METHODS", None)
    return isinstance(methods, Mapping) and name in methods
