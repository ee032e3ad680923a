"""Job specification of a correction: frozen dataclasses, validated on construction.

This module imports nothing heavier than the standard library, so the HTTP front end can use
the same classes (pydantic validates stdlib dataclasses and calls ``__post_init__``) and a job
spec is refused at submission for exactly the reasons the engine would refuse it.

The field names ``objective.metric``, ``objective.sensitive_attribute``, ``objective.reduction``,
``objective.utility_tolerance``, ``weighting.scheme`` and ``method.name`` are fixed by
docs/PRODUCT.md; everything else has a documented default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, get_args, get_type_hints

__all__ = [
    "AttackConfig",
    "CorrectionSpec",
    "EvaluationConfig",
    "FrontierConfig",
    "GuardConfig",
    "InfluenceConfig",
    "MethodConfig",
    "MethodName",
    "Metric",
    "ObjectiveConfig",
    "Scheme",
    "WeightingConfig",
    "check_compatibility",
    "spec_from_dict",
]

Metric = Literal["demographic_parity", "equal_opportunity", "equalized_odds", "robustness"]
Scheme = Literal["hard", "soft-2.1", "soft-2.3", "qp"]
MethodName = Literal[
    "newton", "refit", "retrain_last_k", "finetune", "gradient_ascent", "scrub", "fisher", "bad_teacher"
]
HEAD_METHODS = ("newton", "refit")
"""Methods that act on the logistic head in closed form (and support target tracking)."""
AttackKind = Literal["reflect_linear", "fgsm", "pgd"]
AttackNorm = Literal["linf", "l2"]
HessianMode = Literal["original", "reweighted"]
NegativeWeightPolicy = Literal["clip", "reject"]
InfeasiblePolicy = Literal["error", "best_effort"]
Scope = Literal["last_layer", "full"]
Solver = Literal["auto", "exact", "cg", "lissa", "ekfac"]
Curvature = Literal["gauss_newton", "hessian"]
CGPrecision = Literal["mixed", "float64"]
PolishPolicy = Literal["auto", "always", "never"]

DEFAULT_REDUCTION = 0.6
"""Fraction of the audit target removed when the spec names none. On the Adult example it
cuts the eval demographic-parity difference by about three quarters for under one point of
accuracy; 0.9 removes nearly all of it for about two and a half (docs/BENCHMARKS.md)."""
MAX_DAMPING = 1e9
"""Largest extra Hessian damping: far past any Hessian's scale here, where influence is ~0."""
DEFAULT_L2_REG = 1.0
"""λ of the sum-form head objective Σ wᵢℓᵢ + (λ/2)‖w‖²; the bias is not regularized."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_choice(value: object, literal: Any, name: str) -> None:
    choices = get_args(literal)
    _check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _is_finite(value: object) -> bool:
    try:
        return isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _finite(value: float, name: str) -> None:
    _check(_is_finite(value), f"{name} must be a finite number")


_NUMBER_HINTS = (int, float, int | None, float | None)


def _check_scalar(kind: Any, value: Any, name: str) -> None:
    """Refuse a value of the wrong JSON type before ``__post_init__`` compares it with numbers
    (which would raise TypeError, not a message naming the field)."""
    if kind in _NUMBER_HINTS and not (value is None and type(None) in get_args(kind)):
        _check(isinstance(value, (int, float)), f"{name} must be a number; got {_shown(value)}")
    elif kind == str | None:
        _check(value is None or isinstance(value, str), f"{name} must be a string; got {_shown(value)}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class AttackConfig:
    """An adversarial attack on the audit/eval points.

    ``reflect_linear`` is the paper's construction: each point's head features are reflected
    across the decision boundary to ``-(kappa-1)`` of its margin (no budget). ``fgsm`` and ``pgd``
    attack the raw inputs through the whole network within an ``epsilon`` ball of ``norm``.
    """

    kind: AttackKind = "pgd"
    norm: AttackNorm = "linf"
    epsilon: float = 0.05
    steps: int = 10
    step_size: float | None = None
    kappa: float = 1.3

    def __post_init__(self) -> None:
        _check_choice(self.kind, AttackKind, "attack.kind")
        _check_choice(self.norm, AttackNorm, "attack.norm")
        _finite(self.epsilon, "attack.epsilon")
        _check(self.epsilon > 0, "attack.epsilon must be > 0")
        _check(1 <= self.steps <= 1000, "attack.steps must be between 1 and 1000")
        if self.step_size is not None:
            _finite(self.step_size, "attack.step_size")
            _check(self.step_size > 0, "attack.step_size must be > 0")
        _finite(self.kappa, "attack.kappa")
        _check(self.kappa > 1, "attack.kappa must be > 1 (1 only reaches the boundary)")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What to correct, measured on the audit set.

    ``reduction`` ρ ∈ (0, 1] is the fraction of the current |gap| (or, for robustness, of the mean
    adversarial log-loss) to remove; ``utility_tolerance`` τ ≥ 0 is the allowed first-order
    increase of the mean audit log-loss. ``privileged_group`` orients a two-group gap as
    privileged minus the rest; without it the gap is between the extreme groups. Without
    ``sensitive_attribute`` the first sensitive column of the training data's schema is used.
    """

    metric: Metric = "demographic_parity"
    sensitive_attribute: str | None = None
    reduction: float = DEFAULT_REDUCTION
    utility_tolerance: float = 0.0
    privileged_group: str | None = None
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        _check_choice(self.metric, Metric, "objective.metric")
        _finite(self.reduction, "objective.reduction")
        _check(0 < self.reduction <= 1, f"objective.reduction must be in (0, 1]; got {self.reduction}")
        _finite(self.utility_tolerance, "objective.utility_tolerance")
        _check(self.utility_tolerance >= 0, "objective.utility_tolerance must be >= 0")
        if self.sensitive_attribute is not None:
            _check(bool(self.sensitive_attribute), "objective.sensitive_attribute must name a column")


@dataclass(frozen=True)
class WeightingConfig:
    """How per-sample weights ε are chosen (effective weight 1 + ε).

    ``hard`` removes the fraction ``k_fraction`` of training samples whose removal lowers the
    target most; ``soft-2.1`` is the min-norm ε meeting the target; ``soft-2.3`` (default) the
    min-norm ε meeting the target with zero first-order utility change; ``qp`` the min-norm ε in
    the box [lower, upper] meeting the target with utility change at most τ.
    """

    scheme: Scheme = "soft-2.3"
    k_fraction: float = 0.05
    lower: float = -1.0
    upper: float = 1.0
    on_infeasible: InfeasiblePolicy = "error"

    def __post_init__(self) -> None:
        _check_choice(self.scheme, Scheme, "weighting.scheme")
        _check_choice(self.on_infeasible, InfeasiblePolicy, "weighting.on_infeasible")
        _finite(self.k_fraction, "weighting.k_fraction")
        _check(0 < self.k_fraction < 1, "weighting.k_fraction must be in (0, 1)")
        _finite(self.lower, "weighting.lower")
        _finite(self.upper, "weighting.upper")
        _check(-1 <= self.lower <= 0, "weighting.lower must be in [-1, 0] (1 + ε must stay >= 0)")
        _check(self.upper >= 0, "weighting.upper must be >= 0")


@dataclass(frozen=True)
class MethodConfig:
    """The unlearning algorithm that applies the weights, and its hyperparameters.

    Head methods: ``newton`` is the influence Newton step θ' = θ − H⁻¹Σεᵢgᵢ; ``refit`` the exact
    weighted refit of the logistic head (EU-1). For these, ``max_iterations`` > 1 turns on target
    tracking: influence → weights → step is repeated from the new parameters until the audit
    target is within ``target_tolerance`` (a fraction of the initial gap) of the request.

    Network methods (one shot, weights from the influence at the original model), with the
    removal mass rᵢ = max(0, −εᵢ) and retained weight wᵢ = max(0, 1 + εᵢ) (METHOD.md §6.2):
    ``retrain_last_k`` (EU-k: re-initialize and retrain the last ``layers`` Linear layers on the
    w-weighted loss), ``finetune`` (CU-k/CF-k: continue training the last ``layers`` layers, 0 =
    the whole network, on the w-weighted loss), ``gradient_ascent`` (NegGrad+: descend Σεᵢℓᵢ +
    ``alpha``·Σwᵢℓᵢ), ``scrub`` (teacher-student: max-steps on r-weighted KL, min-steps on
    w-weighted loss + KL), ``fisher`` (Fisher forgetting: noise shaped by the inverse w-weighted
    Fisher of the last ``layers`` layers, scaled by ``fisher_alpha``), ``bad_teacher``
    (distil from the original model on w and from a random model on r).
    """

    name: MethodName = "newton"
    hessian: HessianMode = "original"
    max_iterations: int = 5
    target_tolerance: float = 0.05
    negative_weights: NegativeWeightPolicy = "clip"
    refit_tolerance: float = 1e-8
    refit_max_steps: int = 100
    layers: int = 1
    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0
    alpha: float = 4.0
    max_epochs: int = 2
    temperature: float = 2.0
    fisher_alpha: float = 1e-7

    def __post_init__(self) -> None:
        _check_choice(self.name, MethodName, "method.name")
        _check_choice(self.hessian, HessianMode, "method.hessian")
        _check_choice(self.negative_weights, NegativeWeightPolicy, "method.negative_weights")
        _check(1 <= self.max_iterations <= 100, "method.max_iterations must be between 1 and 100")
        _finite(self.target_tolerance, "method.target_tolerance")
        _check(0 <= self.target_tolerance < 1, "method.target_tolerance must be in [0, 1)")
        _check(self.refit_tolerance > 0, "method.refit_tolerance must be > 0")
        _check(1 <= self.refit_max_steps <= 10_000, "method.refit_max_steps must be in [1, 10000]")
        _check(0 <= self.layers <= 64, "method.layers must be between 0 and 64")
        _check(1 <= self.epochs <= 10_000, "method.epochs must be between 1 and 10000")
        _check(self.max_epochs >= 0, "method.max_epochs must be >= 0")
        # Only scrub reads max_epochs; another method with few epochs must not trip over its default.
        _check(self.name != "scrub" or self.max_epochs <= self.epochs,
               f"method.max_epochs ({self.max_epochs}; scrub's max-step epochs, default 2) must be at most "
               f"method.epochs ({self.epochs}): lower max_epochs or raise epochs")
        for name in ("learning_rate", "weight_decay", "alpha", "temperature", "fisher_alpha"):
            _finite(getattr(self, name), f"method.{name}")
        _check(self.learning_rate > 0, f"method.learning_rate must be > 0; got {self.learning_rate}")
        _check(self.weight_decay >= 0, "method.weight_decay must be >= 0")
        _check(self.alpha >= 0, "method.alpha must be >= 0")
        _check(self.temperature > 0, "method.temperature must be > 0")
        _check(self.fisher_alpha >= 0, "method.fisher_alpha must be >= 0")
        _check(1 <= self.batch_size <= 1_000_000, "method.batch_size must be in [1, 1000000]")


@dataclass(frozen=True)
class InfluenceConfig:
    """Influence of training samples on audit targets.

    ``scope='last_layer'`` (default): the model's logistic head with the rest frozen, in closed
    form; ``l2_reg`` λ is the regularization of the head objective the influence assumes (the head
    is polished to that objective's optimum first); ``damping`` is added to the Hessian only;
    ``chunk_size`` bounds memory (the Hessian is accumulated chunk by chunk).

    ``scope='full'``: every parameter of the MLP, per-sample gradients by ``torch.func``;
    inverse-Hessian-vector products by ``solver``: ``exact`` (dense Hessian, for at most
    ``exact_max_parameters``), ``cg`` (conjugate gradient on Hessian-vector products, to
    ``cg_tolerance`` relative residual; the default 1e-4 keeps every influence within 0.06 % of a
    1e-6 solve on the Adult MLP, correlation 0.9999998, in 47 instead of 74 products; preconditioned
    by the Gauss-Newton matrix of ``cg_preconditioner_rows`` rows drawn by curvature, 0 for plain
    CG: the same solution in about a third of the products; ``cg_precision`` ``mixed``, the
    default, makes CG's products in float32 and accepts a solution only once a float64 product
    shows its residual within ``cg_tolerance``, refining it otherwise; ``float64`` makes every
    product in float64; ``cg_recycle_vectors`` search directions are kept and reused by later
    solves at the same parameters, weights and damping, 0 for none), ``lissa``
    (stochastic Neumann series) or ``ekfac``
    (eigenvalue-corrected Kronecker-factored Gauss-Newton over the Linear and Conv2d layers, exact
    diagonal for other parameters: approximate, no pass over the data per solve; for networks too
    large for CG: its approximate steps overshoot); ``auto`` picks exact when small enough, else CG
    unless CG's estimated flops for a job (one row's forward flops × rows × 3 passes per
    Gauss-Newton product × 105 products) exceed ``auto_cg_max_flops`` and EK-FAC covers the
    network with ``gauss_newton`` curvature, where it picks EK-FAC. The full Hessian of a
    network need not be positive definite, and a trained ReLU network is rarely at an exact
    optimum: ``curvature`` is ``gauss_newton`` by default (Σ wᵢpᵢ(1−pᵢ)∇zᵢ∇zᵢᵀ + λI, positive
    definite by construction, the usual choice for network influence) or ``hessian`` (the exact
    Hessian, which may be indefinite). ``damping`` shifts either (when it is 0, 1e-3 per unit of
    total sample weight is used).
    ``max_memory_gb`` refuses a job whose estimated working memory is larger, before it starts.

    ``polish`` (head scope): influence assumes the head sits at the optimum of its regularized
    training objective. ``auto`` (default) moves it there only when that leaves the model as the
    user had it: audit log-loss within ``polish_max_log_loss_change``, audit accuracy within
    ``polish_max_accuracy_change`` and the audit target within ``polish_max_target_change``
    (relative). Otherwise, and always with ``never``, the head stays at the user's parameters and
    the objective is tilted by its gradient there, ``L(θ; w) − g₀ᵀθ``, so that the user's head is
    its exact optimum and influence, Newton steps and refits are taken about it (docs/ENGINE.md).
    ``always`` polishes whatever it costs (the report shows the cost).
    """

    scope: Scope = "last_layer"
    l2_reg: float = 1.0
    damping: float = 0.0
    polish: PolishPolicy = "auto"
    polish_max_log_loss_change: float = 0.01
    polish_max_accuracy_change: float = 0.005
    polish_max_target_change: float = 0.1
    polish_max_steps: int = 50
    polish_tolerance: float = 1e-8
    chunk_size: int = 8192
    solver: Solver = "auto"
    curvature: Curvature = "gauss_newton"
    exact_max_parameters: int = 5000
    # Adult, 30 k rows: CG's estimate is 1.6e11 for the 8.8 k example MLP, whose job measured 25 s
    # of engine time (≈ 6.6 GFLOP/s on one thread), and 1.9e13 for the 1 M MLP (≈ 50 min at that
    # rate). 1e12 lies 6× above the one and 19× below the other and is ≈ 2.5 min at that rate:
    # half the 5 min, because CG's product count grows on wide networks (the sketch's
    # memory cap leaves them fewer rows) and the estimate does not see it.
    auto_cg_max_flops: float = 1e12
    cg_tolerance: float = 1e-4
    cg_max_iterations: int = 2000
    cg_preconditioner_rows: int = 1024
    cg_precision: CGPrecision = "mixed"
    cg_recycle_vectors: int = 128
    lissa_depth: int = 2000
    lissa_scale: float | None = None
    lissa_batch_size: int = 512
    max_memory_gb: float = 8.0

    def __post_init__(self) -> None:
        _check_choice(self.scope, Scope, "influence.scope")
        _check_choice(self.solver, Solver, "influence.solver")
        _check_choice(self.curvature, Curvature, "influence.curvature")
        _check(self.solver != "ekfac" or self.curvature == "gauss_newton",
               "influence.solver 'ekfac' approximates the Gauss-Newton curvature: use influence.curvature "
               "'gauss_newton' (the default), or solver 'cg' for the exact Hessian")
        _check_choice(self.polish, PolishPolicy, "influence.polish")
        for name in ("polish_max_log_loss_change", "polish_max_accuracy_change", "polish_max_target_change"):
            _finite(getattr(self, name), f"influence.{name}")
            _check(getattr(self, name) >= 0, f"influence.{name} must be >= 0")
        _finite(self.l2_reg, "influence.l2_reg")
        _check(self.l2_reg >= 0, "influence.l2_reg must be >= 0")
        _finite(self.damping, "influence.damping")
        _finite(self.damping, "influence.damping")
        _check(0 <= self.damping <= MAX_DAMPING, f"influence.damping must be in [0, {MAX_DAMPING:g}]")
        _check(0 <= self.polish_max_steps <= 1000, "influence.polish_max_steps must be in [0, 1000]")
        _check(self.polish_tolerance > 0, "influence.polish_tolerance must be > 0")
        _check(16 <= self.chunk_size <= 1_000_000, "influence.chunk_size must be in [16, 1000000]")
        _check(1 <= self.exact_max_parameters <= 50_000,
               "influence.exact_max_parameters must be in [1, 50000]")
        _finite(self.auto_cg_max_flops, "influence.auto_cg_max_flops")
        _check(self.auto_cg_max_flops > 0, "influence.auto_cg_max_flops must be > 0")
        _check(0 < self.cg_tolerance < 1, "influence.cg_tolerance must be in (0, 1)")
        _check(1 <= self.cg_max_iterations <= 100_000, "influence.cg_max_iterations must be in [1, 100000]")
        _check(0 <= self.cg_preconditioner_rows <= 100_000,
               "influence.cg_preconditioner_rows must be in [0, 100000] (0: plain CG)")
        _check_choice(self.cg_precision, CGPrecision, "influence.cg_precision")
        _check(0 <= self.cg_recycle_vectors <= 10_000,
               "influence.cg_recycle_vectors must be in [0, 10000] (0: no recycling)")
        _check(1 <= self.lissa_depth <= 1_000_000, "influence.lissa_depth must be in [1, 1000000]")
        if self.lissa_scale is not None:
            _finite(self.lissa_scale, "influence.lissa_scale")
            _check(self.lissa_scale > 0, "influence.lissa_scale must be > 0")
        _check(1 <= self.lissa_batch_size <= 1_000_000, "influence.lissa_batch_size must be in [1, 1000000]")
        _finite(self.max_memory_gb, "influence.max_memory_gb")
        _check(self.max_memory_gb > 0, "influence.max_memory_gb must be > 0")


DEFAULT_FRONTIER_REDUCTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_FRONTIER_K_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
MAX_FRONTIER_POINTS = 50


def _fractions(values: Any, name: str, low_open: float, high: float, high_closed: bool) -> tuple[float, ...]:
    _check(isinstance(values, (list, tuple)), f"{name} must be a list of numbers")
    _check(len(values) <= MAX_FRONTIER_POINTS, f"{name} may list at most {MAX_FRONTIER_POINTS} values")
    out = []
    for value in values:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} must hold numbers")
        _finite(value, name)
        inside = low_open < value <= high if high_closed else low_open < value < high
        _check(inside, f"{name} values must lie in ({low_open:g}, {high:g}{']' if high_closed else ')'}")
        out.append(float(value))
    return tuple(sorted(set(out)))


DEFAULT_ROBUST_SAMPLE_ROWS = 2000
DEFAULT_FRONTIER_ROBUST_SAMPLE_ROWS = 1000
"""Half the before/after sample: the frontier attacks its 14 default points on every split, so
this halves most of a small job's evaluation time (±3 points at 95 % on a rate near 0.5, paired
across the points)."""
"""Rows per split that robust accuracy is measured on by default (a ±2 pp interval at worst)."""


@dataclass(frozen=True)
class FrontierConfig:
    """The trade-off frontier the report shows next to the chosen correction.

    From the influence at the input model (computed once), one unguarded Newton step per point:
    the job's weighting scheme at each ``reductions`` ρ (``qp`` when the job's scheme is
    ``hard``) and hard removal of each ``k_fractions`` share of the training rows. Both lists
    empty: no frontier. ``robust_sample_rows``: each point's robust accuracy is measured on this
    many of the split's robust rows (``evaluation.robust_sample_rows``), a seeded subsample
    stratified by sensitive group and the same for every point (so the points compare paired);
    null: on all of them, as before and after are. A point's ``robustness`` entry gives its rows.
    """

    reductions: tuple[float, ...] = DEFAULT_FRONTIER_REDUCTIONS
    k_fractions: tuple[float, ...] = DEFAULT_FRONTIER_K_FRACTIONS
    robust_sample_rows: int | None = DEFAULT_FRONTIER_ROBUST_SAMPLE_ROWS

    def __post_init__(self) -> None:
        rows = self.robust_sample_rows
        whole = isinstance(rows, int) and not isinstance(rows, bool)
        _check(rows is None or (whole and 1 <= rows <= 100_000_000),
               "evaluation.frontier.robust_sample_rows must be null or a whole number in [1, 100000000]")
        object.__setattr__(self, "reductions",
                           _fractions(self.reductions, "evaluation.frontier.reductions", 0.0, 1.0, True))
        object.__setattr__(self, "k_fractions",
                           _fractions(self.k_fractions, "evaluation.frontier.k_fractions", 0.0, 1.0, False))


@dataclass(frozen=True)
class EvaluationConfig:
    """What the before/after report measures besides accuracy and fairness.

    ``n_boot`` / ``ci_level``: paired bootstrap confidence intervals of every before/after
    metric and of its change (resampled within sensitive groups, seeded by the job's seed).
    ``min_group_rows``: a group with fewer rows in any split gets a ``small_group`` warning;
    ``min_changed_predictions``: fewer changed eval (else audit) predictions get a
    ``few_predictions_changed`` warning. ``frontier``: the grid of the report's trade-off
    frontier (:class:`FrontierConfig`).

    ``robust_sample_rows``: robust accuracy (and its interval) is measured on a seeded sample of
    this many rows of each split, stratified by sensitive group, the same rows for every model
    scored (before, after, each frontier point); null, or a split with no more rows: every row.
    ``robust_early_stop``: the adaptive FGSM/PGD attack stops on a row as soon as the row is
    misclassified (it counts as broken either way; only the rows still standing cost further
    steps). The frozen set, crafted once against the input model, always takes every step.
    """

    robustness: bool = True
    attack: AttackConfig = field(default_factory=AttackConfig)
    n_boot: int = 1000
    ci_level: float = 0.95
    min_group_rows: int = 30
    min_changed_predictions: int = 20
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    robust_sample_rows: int | None = DEFAULT_ROBUST_SAMPLE_ROWS
    robust_early_stop: bool = True

    def __post_init__(self) -> None:
        rows = self.robust_sample_rows
        whole = isinstance(rows, int) and not isinstance(rows, bool)
        _check(rows is None or (whole and 1 <= rows <= 100_000_000),
               "evaluation.robust_sample_rows must be null or a whole number in [1, 100000000]")
        _check(100 <= self.n_boot <= 100_000, "evaluation.n_boot must be in [100, 100000]")
        _finite(self.ci_level, "evaluation.ci_level")
        _check(0.5 <= self.ci_level < 1, "evaluation.ci_level must be in [0.5, 1)")
        _check(1 <= self.min_group_rows <= 1_000_000, "evaluation.min_group_rows must be in [1, 1000000]")
        _check(0 <= self.min_changed_predictions <= 1_000_000,
               "evaluation.min_changed_predictions must be in [0, 1000000]")


@dataclass(frozen=True)
class GuardConfig:
    """When a correction step is accepted (every tracking iteration, the first included).

    A step is undone when it makes the audit target (surrogate or hard-label metric) worse,
    realizes less than ``min_progress_ratio`` of its first-order predicted reduction (head
    methods), raises the mean audit log-loss by more than ``objective.utility_tolerance`` +
    ``max_log_loss_increase`` over the input model, or lowers audit accuracy by more than
    ``max_accuracy_drop``; for robustness also when adaptive robust accuracy on audit does not
    improve: it must win more audit rows under the adaptive attack than it loses by
    ``robust_gain_z`` standard errors of a paired sign test (McNemar). Before giving up on a step
    its size is halved up to ``line_search_steps`` times.
    """

    min_progress_ratio: float = 0.5
    max_log_loss_increase: float = 0.05
    max_accuracy_drop: float = 0.03
    line_search_steps: int = 4
    robust_gain_z: float = 1.96

    def __post_init__(self) -> None:
        for name in ("min_progress_ratio", "max_log_loss_increase", "max_accuracy_drop", "robust_gain_z"):
            _finite(getattr(self, name), f"guard.{name}")
        _check(0 <= self.robust_gain_z <= 10, "guard.robust_gain_z must be in [0, 10]")
        _check(0 <= self.min_progress_ratio <= 1, "guard.min_progress_ratio must be in [0, 1]")
        _check(self.max_log_loss_increase >= 0, "guard.max_log_loss_increase must be >= 0")
        _check(0 <= self.max_accuracy_drop <= 1, "guard.max_accuracy_drop must be in [0, 1]")
        _check(0 <= self.line_search_steps <= 20, "guard.line_search_steps must be in [0, 20]")


@dataclass(frozen=True)
class CorrectionSpec:
    """A complete correction job, as resolved (every default filled in) in the report."""

    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-compatible data."""
        return asdict(self)


T = TypeVar("T")


def _build(cls: type[T], data: Any, path: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be an object")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = hints[name]
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{path}.{name}")
        else:
            _check_scalar(kind, value, f"{path}.{name}".removeprefix("spec."))
            kwargs[name] = value
    return cls(**kwargs)


def spec_from_dict(data: dict[str, Any]) -> CorrectionSpec:
    """Build a :class:`CorrectionSpec` from JSON data, refusing unknown fields.

    Raises:
        ValueError: naming the field that is wrong and what it must be.
    """
    return _build(CorrectionSpec, data, "spec")


def check_compatibility(spec: CorrectionSpec, linear_layers: int, units: str = "Linear layers") -> None:
    """Refuse a spec that cannot be applied to a model with ``linear_layers`` trainable units
    (an MLP's Linear layers; ``units`` names them in messages).

    Raises:
        ValueError: naming the field and the reason.
    """
    method = spec.method
    if method.name == "retrain_last_k" and not 1 <= method.layers <= linear_layers:
        raise ValueError(f"method.layers must be between 1 and {linear_layers} (the model has "
                         f"{linear_layers} {units}) for retrain_last_k; got {method.layers}")
    if method.name in ("finetune", "fisher") and method.layers > linear_layers:
        raise ValueError(f"method.layers must be at most {linear_layers} (the model has "
                         f"{linear_layers} {units}); got {method.layers}")
    if method.hessian == "reweighted" and method.name != "newton":
        raise ValueError("method.hessian 'reweighted' applies to method 'newton' only")
    if spec.influence.scope == "full" and method.name == "refit":
        raise ValueError("method 'refit' refits the logistic head; use influence.scope 'last_layer'")
    if (spec.influence.scope == "full" and spec.objective.metric == "robustness"
            and spec.objective.attack.kind == "reflect_linear"):
        raise ValueError("objective.attack.kind 'reflect_linear' acts in head-feature space; with "
                         "influence.scope 'full' use 'pgd' or 'fgsm' (input space)")
