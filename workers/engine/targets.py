"""Audit targets of a correction, buildable for any version of the model.

The adversarial set of a robustness target is crafted once, against the original model, and
then held fixed (the influence of a frozen target is what the first-order theory predicts):
inputs for FGSM/PGD, the original head's direction for the paper's linear reflection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.engine.attacks import attack_inputs, reflect_linear
from workers.engine.config import CorrectionSpec
from workers.engine.data import Dataset
from workers.engine.model import HeadModel
from workers.engine.objectives import GroupGap, MeanLogLoss, Objective

__all__ = ["AuditTargets"]


@dataclass
class AuditTargets:
    """The target and utility objectives on the audit set, with the frozen attack (if any)."""

    audit: Dataset
    spec: CorrectionSpec
    sensitive: str
    frozen: np.ndarray | torch.Tensor | None

    @classmethod
    def prepare(cls, model: HeadModel, audit: Dataset, spec: CorrectionSpec, sensitive: str) -> AuditTargets:
        """Craft the frozen attack against the original ``model`` when the target is robustness."""
        frozen: np.ndarray | torch.Tensor | None = None
        attack = spec.objective.attack
        if spec.objective.metric == "robustness":
            frozen = (model.theta() if attack.kind == "reflect_linear"
                      else attack_inputs(model, audit.features, audit.labels, attack))
        return cls(audit, spec, sensitive, frozen)

    def labels(self, device: torch.device) -> torch.Tensor:
        """Audit labels as float64 on ``device``."""
        return torch.from_numpy(self.audit.labels).to(device, torch.float64)

    def for_model(self, model: HeadModel) -> tuple[Objective, MeanLogLoss]:
        """(target, utility) as functions of ``model``'s head parameters."""
        design = model.design(self.audit.features)
        labels = self.labels(model.device)
        utility = MeanLogLoss(design, labels)
        if self.frozen is None:
            gap = GroupGap.build(self.spec.objective.metric, design, self.audit.labels,
                                 self.audit.sensitive[self.sensitive], self.spec.objective.privileged_group,
                                 "audit")
            return gap, utility
        if isinstance(self.frozen, torch.Tensor):
            adversarial = reflect_linear(design, self.frozen, self.spec.objective.attack.kappa)
        else:
            adversarial = model.design(self.frozen)
        return MeanLogLoss(adversarial, labels, name="robustness"), utility
