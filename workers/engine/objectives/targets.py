"""Audit targets of a correction, buildable for any version of the model.

Fairness targets are soft-rate gaps of the model on the audit set. A robustness target with an
input-space attack (``pgd``/``fgsm``) is *adaptive*: each time it is built for a model, the
attack is crafted against that model, and its gradient is the gradient of the adversarial
log-loss at the crafted points (Danskin). Holding an attack crafted once against the original
model fixed fits the correction to that one attack and reads as robustness that a fresh attack
does not confirm (measured: frozen robust accuracy 0.957 against adaptive 0.069 on Adult).
The paper's ``reflect_linear`` stays frozen: reflected at the current head it flips every
prediction by construction, so its adaptive form carries no information; for it, and for every
robustness target, a step is accepted only when the adaptive *budgeted* attack of
:func:`acceptance_attack` does better on the corrected model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workers.engine.config import AttackConfig, CorrectionSpec
from workers.engine.io.datasets import Dataset
from workers.engine.models.head_model import HeadModel
from workers.engine.objectives.attacks import attack_inputs, reflect_linear
from workers.engine.objectives.surrogates import GroupGap, MeanLogLoss, Objective

__all__ = ["AuditTargets", "acceptance_attack"]


def acceptance_attack(spec: CorrectionSpec) -> AttackConfig | None:
    """The input-space attack whose adaptive robust accuracy must improve (robustness only)."""
    if spec.objective.metric != "robustness":
        return None
    if spec.objective.attack.kind != "reflect_linear":
        return spec.objective.attack
    evaluation = spec.evaluation.attack
    return evaluation if evaluation.kind != "reflect_linear" else AttackConfig()


@dataclass
class AuditTargets:
    """The target and utility objectives on the audit set (and the paper's frozen reflection)."""

    audit: Dataset
    spec: CorrectionSpec
    sensitive: str
    frozen: torch.Tensor | None
    _gap: tuple[torch.Tensor, GroupGap] | None = field(default=None, init=False, repr=False)
    """The fairness gap built on the last design (a head variant shares its model's design)."""

    @classmethod
    def prepare(cls, model: HeadModel, audit: Dataset, spec: CorrectionSpec, sensitive: str) -> AuditTargets:
        """Keep the original head when the target is the paper's frozen ``reflect_linear``."""
        objective = spec.objective
        reflect = objective.metric == "robustness" and objective.attack.kind == "reflect_linear"
        frozen = model.theta() if reflect else None
        return cls(audit, spec, sensitive, frozen)

    @property
    def adaptive(self) -> bool:
        """Whether the target is rebuilt against each model (input-space robustness)."""
        return self.spec.objective.metric == "robustness" and self.frozen is None

    def labels(self, device: torch.device) -> torch.Tensor:
        """Audit labels as float64 on ``device``."""
        return torch.from_numpy(self.audit.labels).to(device, torch.float64)

    def adversarial_inputs(self, model: HeadModel) -> np.ndarray:
        """The objective's input-space attack crafted against ``model`` on the audit set."""
        return attack_inputs(model, self.audit.features, self.audit.labels, self.spec.objective.attack)

    def robust_correct(self, model: HeadModel, adversarial: np.ndarray | None = None) -> np.ndarray | None:
        """Per audit row: is ``model`` right under the adaptive acceptance attack? (robustness only;
        ``adversarial``: that attack already crafted against ``model``.)"""
        attack = acceptance_attack(self.spec)
        if attack is None:
            return None
        if adversarial is None:
            adversarial = attack_inputs(model, self.audit.features, self.audit.labels, attack)
        correct: np.ndarray = (model.logits(adversarial).cpu().numpy() >= 0) == (self.audit.labels == 1)
        return correct

    def _fairness_gap(self, design: torch.Tensor) -> GroupGap:
        if self._gap is None or self._gap[0] is not design:
            self._gap = (design, GroupGap.build(self.spec.objective.metric, design, self.audit.labels,
                                                self.audit.sensitive[self.sensitive],
                                                self.spec.objective.privileged_group, "audit"))
        return self._gap[1]

    def for_model(self, model: HeadModel, adversarial: np.ndarray | None = None,
                  ) -> tuple[Objective, MeanLogLoss]:
        """(target, utility) as functions of ``model``'s head parameters; an adaptive target is
        crafted against ``model`` (or is ``adversarial``, the objective's attack already crafted)."""
        design = model.design(self.audit.features)
        labels = self.labels(model.device)
        utility = MeanLogLoss(design, labels)
        if self.spec.objective.metric != "robustness":
            return self._fairness_gap(design), utility
        if self.frozen is not None:
            reflected = reflect_linear(design, self.frozen, self.spec.objective.attack.kappa)
            return MeanLogLoss(reflected, labels, name="robustness"), utility
        points = self.adversarial_inputs(model) if adversarial is None else adversarial
        return MeanLogLoss(model.design(points), labels, name="robustness"), utility
