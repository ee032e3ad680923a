"""The network unlearning methods by name, and one entry point that dispatches on the config."""

from __future__ import annotations

from workers.engine.unlearning.methods import (
    bad_teacher,
    finetune,
    fisher,
    gradient_ascent,
    retrain_last_k,
    scrub,
)
from workers.engine.unlearning.methods.base import MethodOutcome, NetworkMethod, NetworkTask
from workers.engine.unlearning.methods.common import single_threaded

__all__ = ["NETWORK_METHODS", "apply_network_method"]

NETWORK_METHODS: dict[str, NetworkMethod] = {
    "retrain_last_k": retrain_last_k.apply,
    "finetune": finetune.apply,
    "gradient_ascent": gradient_ascent.apply,
    "scrub": scrub.apply,
    "fisher": fisher.apply,
    "bad_teacher": bad_teacher.apply,
}


def apply_network_method(task: NetworkTask) -> MethodOutcome:
    """Run the method named by ``task.config.name``, with one CPU thread (see
    :func:`~workers.engine.unlearning.methods.common.single_threaded`).

    Raises:
        ValueError: the name is not a network method (head methods live in
            :mod:`workers.engine.unlearning.head_steps`).
    """
    method = NETWORK_METHODS.get(task.config.name)
    if method is None:
        raise ValueError(f"method.name {task.config.name!r} is not a network method; choose one of "
                         f"{', '.join(sorted(NETWORK_METHODS))}")
    with single_threaded():
        return method(task)
