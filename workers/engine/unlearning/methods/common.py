"""Helpers shared by the network unlearning methods: losses, weighted batching, freezing, output.

Conventions (METHOD.md §6.2):

* Every weighted pass runs over the rows whose coefficient is non-zero, in a seeded random order,
  so a sample with weight 0 is exactly as if it were not in the data: hard weights reproduce
  training on the retain (or forget) set bit for bit, for the same seed.
* Coefficients are divided by the mean of their absolute values over those rows, and a batch's
  loss is the mean of coefficient × per-sample term. With hard weights this is the plain mean
  over the subset; with soft weights it is an unbiased mini-batch estimate of the weighted sum
  (up to one constant factor), unlike a per-batch weighted mean.
* All randomness (initialization, shuffling, noise) comes from one ``torch.Generator`` on the CPU,
  so results depend on the seed only, never on the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workers.engine.errors import NonFiniteError, NumericalError
from workers.engine.models.resnet import init_resnet
from workers.engine.models.training import _init_linear, _seeded_model, correction_mode
from workers.engine.unlearning.methods.base import MethodOutcome, NetworkTask

__all__ = [
    "MAX_GRAD_NORM",
    "MAX_GROWTH",
    "STAGE",
    "LossFn",
    "Trainer",
    "WeightedRows",
    "bernoulli_kl",
    "check_layers",
    "finish",
    "fit_retained",
    "forward",
    "make_generator",
    "per_sample_bce",
    "random_network",
    "reinitialize_from",
    "single_threaded",
    "trainable_from",
    "weighted_task_loss",
]

STAGE = "unlearn"
"""The pipeline stage named by every error raised here."""
MAX_GRAD_NORM = 10.0
"""Gradients are clipped to this global norm before each step: ascent terms are unbounded."""
MAX_GROWTH = 1e3
"""A run whose trained parameters' norm exceeds this multiple of the starting norm (or of 1) has
diverged. Adam moves each parameter by about ``learning_rate`` per step, so sane settings stay far
below it; an ascent with an absurd learning rate saturates the network instead of producing NaN."""
FORWARD_BATCH = 65_536
"""Rows per forward pass when whole-set predictions are needed (teachers)."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(row indices on the device, coefficients of those rows) -> scalar loss of the batch."""


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with one intra-op CPU thread, then restore the previous setting.

    The methods take hundreds of small mini-batch steps; on a small MLP, OpenMP synchronization
    costs more than it saves (Adult, 10 epochs of [64, 32]: 0.6 s on one thread, 13 s on two
    busy cores). One thread also makes CPU results independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed`` (the global RNG is never touched)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def per_sample_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each sample, computed stably from logits."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Per-sample KL(teacher ‖ student) between Bernoulli outputs softened by ``temperature``.

    KL(p‖q) = p log(p/q) + (1−p) log((1−p)/(1−q)) with p = σ(t/T), q = σ(s/T), computed from
    log-sigmoids so it stays finite for any logits; multiplied by T² as in Hinton et al., so the
    gradient scale does not shrink as T grows.
    """
    t = teacher_logits / temperature
    s = student_logits / temperature
    p = torch.sigmoid(t)
    log_ratio_pos = F.logsigmoid(t) - F.logsigmoid(s)
    log_ratio_neg = F.logsigmoid(-t) - F.logsigmoid(-s)
    return (p * log_ratio_pos + (1 - p) * log_ratio_neg) * temperature**2


def forward(network: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    """Logits of ``network`` for every row, without gradients, shape (n,)."""
    with torch.no_grad():
        parts = [network(features[start:start + FORWARD_BATCH]).reshape(-1)
                 for start in range(0, features.shape[0], FORWARD_BATCH)]
    return torch.cat(parts) if parts else features.new_zeros(0)


@dataclass(frozen=True)
class WeightedRows:
    """Rows with a non-zero coefficient and their coefficients, normalized to mean |c| = 1.

    Attributes:
        index: row indices (int64, CPU), in ascending order.
        coefficient: their coefficients (CPU, the features' dtype).
    """

    index: torch.Tensor
    coefficient: torch.Tensor

    @classmethod
    def build(cls, coefficient: torch.Tensor, dtype: torch.dtype) -> WeightedRows:
        """Keep the rows where ``coefficient`` is non-zero and normalize.

        Raises:
            ValueError: if every coefficient is zero (nothing to train on).
        """
        values = coefficient.detach().to("cpu", torch.float64)
        index = torch.nonzero(values != 0).reshape(-1)
        if index.numel() == 0:
            raise ValueError("every sample has weight 0 for this pass; check the weights ε")
        kept = values[index]
        return cls(index=index, coefficient=(kept / kept.abs().mean()).to(dtype))

    @property
    def count(self) -> int:
        """Number of rows in the pass."""
        return int(self.index.numel())

    def batches(self, batch_size: int, generator: torch.Generator,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(row indices, coefficients) of each mini-batch of a seeded permutation."""
        order = torch.randperm(self.count, generator=generator)
        for start in range(0, self.count, batch_size):
            chosen = order[start:start + batch_size]
            yield self.index[chosen], self.coefficient[chosen]


def check_layers(task: NetworkTask, allow_zero: bool) -> int:
    """The number of trailing Linear layers a method acts on (0 = all when allowed).

    Raises:
        ValueError: naming ``method.layers`` when it does not fit the architecture.
    """
    count = len(task.arch.trainable_units)
    layers = task.config.layers
    low = 0 if allow_zero else 1
    if not low <= layers <= count:
        raise ValueError(f"method.layers must be between {low} and {count} (the model has {count} "
                         f"{task.arch.unit_description}) for {task.config.name}; got {layers}")
    return count if layers == 0 else layers


def _first_position(task: NetworkTask, layers: int) -> int:
    """Sequential position where the last ``layers`` Linear layers start; all of them (every Linear
    layer) means the whole network, a cnn's convolution blocks included."""
    indices = task.arch.trainable_units
    return 0 if layers >= len(indices) else indices[-layers]


def trainable_from(task: NetworkTask, layers: int) -> list[nn.Parameter]:
    """Freeze everything before the ``layers``-th Linear layer from the end; return the rest.

    The returned parameters (that layer and every module after it) have ``requires_grad`` set.
    With ``layers`` = every Linear layer, that is the whole network (a cnn's Conv2d layers too).
    """
    start = _first_position(task, layers)
    trainable: list[nn.Parameter] = []
    for position, module in enumerate(task.network):
        for parameter in module.parameters():
            parameter.requires_grad_(position >= start)
            if position >= start:
                trainable.append(parameter)
    return trainable


def reinitialize_from(task: NetworkTask, layers: int, generator: torch.Generator) -> None:
    """Draw fresh PyTorch-default initial values for the last ``layers`` Linear layers (all of
    them: every Linear and Conv2d layer)."""
    start = _first_position(task, layers)
    for position, module in enumerate(task.network):
        if position < start:
            continue
        if task.arch.resnet is not None:
            init_resnet(module, generator)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            _init_linear(module, generator)


def random_network(task: NetworkTask, generator: torch.Generator) -> nn.Sequential:
    """A freshly initialized, frozen model of the task's architecture, on its device and dtype."""
    model = _seeded_model(task.arch, generator).to(task.features.device, task.features.dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class Trainer:
    """Adam on a set of parameters, stepping through weighted mini-batches with checks.

    Args:
        task: supplies the configuration (learning rate, weight decay, batch size, name).
        parameters: what the optimizer updates.
        generator: the source of the batch order.
    """

    def __init__(self, task: NetworkTask, parameters: list[nn.Parameter], generator: torch.Generator):
        config = task.config
        self.parameters = parameters
        self.optimizer = torch.optim.Adam(parameters, lr=config.learning_rate,
                                          weight_decay=config.weight_decay)
        self.batch_size = config.batch_size
        self.generator = generator
        self.device = task.features.device
        self.name = config.name
        self.start_norm = _norm(parameters)

    def epoch(self, rows: WeightedRows, loss_fn: LossFn) -> float:
        """One pass over ``rows``; returns the mean batch loss.

        Raises:
            NonFiniteError: if a loss or the updated parameters are NaN/Inf.
        """
        total, batches = 0.0, 0
        for index, coefficient in rows.batches(self.batch_size, self.generator):
            loss = loss_fn(index.to(self.device), coefficient.to(self.device))
            if not torch.isfinite(loss):
                raise NonFiniteError(STAGE, f"the {self.name} loss (lower method.learning_rate)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM)
            self.optimizer.step()
            total += float(loss.detach())
            batches += 1
        self._check_parameters()
        return total / max(batches, 1)

    def _check_parameters(self) -> None:
        norm = _norm(self.parameters)
        if not math.isfinite(norm):
            raise NonFiniteError(STAGE, f"the {self.name} parameters (lower method.learning_rate)")
        if norm > MAX_GROWTH * max(self.start_norm, 1.0):
            raise NumericalError(
                f"{self.name} diverged at stage '{STAGE}': the parameter norm grew from "
                f"{self.start_norm:.3g} to {norm:.3g}; lower method.learning_rate or method.epochs"
                + (" or raise method.alpha" if self.name == "gradient_ascent" else "")
            )


def _norm(parameters: list[nn.Parameter]) -> float:
    """Euclidean norm of all parameters together, in float64 (inf/nan propagate)."""
    with torch.no_grad():
        return math.sqrt(sum(float(p.double().pow(2).sum()) for p in parameters))


def finish(task: NetworkTask, notes: list[str] | None = None,
           diagnostics: dict[str, float] | None = None) -> MethodOutcome:
    """The network's state dict as CPU tensors with the original's keys, shapes and dtypes.

    Raises:
        NonFiniteError: if any tensor has NaN/Inf.
        ValueError: if the network's state dict no longer matches the original's.
    """
    reference = task.original.state_dict()
    state = {key: value.detach().to("cpu").clone() for key, value in task.network.state_dict().items()}
    if state.keys() != reference.keys():
        raise ValueError(f"{task.config.name} changed the state-dict keys")
    for key, value in state.items():
        if value.shape != reference[key].shape or value.dtype != reference[key].dtype:
            raise ValueError(f"{task.config.name} changed the shape or dtype of {key}")
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(STAGE, f"the {task.config.name} result ({key})")
    return MethodOutcome(state=state, notes=list(notes or []), diagnostics=dict(diagnostics or {}))


def weighted_task_loss(task: NetworkTask) -> LossFn:
    """Batch loss mean(cᵢ·ℓᵢ): the per-sample BCE of the network weighted by the row coefficients."""
    features, labels = task.features, task.labels.to(task.features.dtype)

    def loss(index: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        logits = task.network(features[index]).reshape(-1)
        return (coefficient * per_sample_bce(logits, labels[index])).mean()

    return loss


def fit_retained(task: NetworkTask, layers: int, generator: torch.Generator) -> MethodOutcome:
    """Train the last ``layers`` Linear layers (and what follows) on the w-weighted loss.

    Runs ``config.epochs`` passes over the rows with wᵢ > 0, then returns the checked state.
    Shared by ``retrain_last_k`` (after re-initialization) and ``finetune``.
    """
    rows = WeightedRows.build(task.retained, task.features.dtype)
    trainer = Trainer(task, trainable_from(task, layers), generator)
    correction_mode(task.network)
    loss = weighted_task_loss(task)
    last = 0.0
    for _ in range(task.config.epochs):
        last = trainer.epoch(rows, loss)
    task.network.eval()
    notes = [f"trained the last {layers} Linear layer(s) for {task.config.epochs} epochs on "
             f"{rows.count} rows with weight wᵢ = max(0, 1 + εᵢ) > 0"]
    return finish(task, notes, {"final_loss": last, "rows": float(rows.count)})
