"""Baselines outside the engine: weighted retraining of the whole MLP, and Fairlearn.

Fairlearn and scikit-learn are benchmark-only dependencies (the ``bench`` extra); they are
imported here, inside the functions that use them, and nowhere in the product.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.engine_runs import Example
from workers.engine.evaluation.metrics import classification_metrics
from workers.engine.models.training import train_mlp

__all__ = ["BaselineOutcome", "fairlearn_dp", "logistic_regression", "retrain_weighted"]

LOGREG_MAX_ITER = 1000


BaselineOutcome = tuple[dict[str, Any], float, dict[str, Any]]
"""(eval metrics as :func:`classification_metrics` returns them, fit seconds, details)."""


def _eval_metrics(example: Example, proba: np.ndarray) -> dict[str, Any]:
    data = example.eval
    return classification_metrics(proba, data.labels, data.sensitive[example.sensitive])


def retrain_weighted(example: Example, weights: np.ndarray, seed: int) -> BaselineOutcome:
    """Train the example's MLP from scratch with sample weights ``max(0, weights)``.

    Same architecture, Adam settings (epochs, batch, lr, weight decay) and — for ``seed`` equal
    to the example's — the same initialization and shuffling as the baseline model.
    """
    train = example.inputs.train
    settings = example.settings
    clipped = np.maximum(weights, 0.0)
    started = time.perf_counter()
    model = train_mlp(example.inputs.arch, train.features, train.labels.astype(np.float64), seed=seed,
                      epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                      weight_decay=settings.weight_decay, sample_weight=clipped)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        logits = model(torch.as_tensor(example.eval.features, dtype=torch.float32)).squeeze(1)
    proba = torch.sigmoid(logits).double().numpy()
    details = {"seed": seed, "zero_weights": int((clipped == 0).sum()),
               "clipped_negative": int((weights < 0).sum()),
               "weight_min": float(weights.min()), "weight_max": float(weights.max())}
    return _eval_metrics(example, proba), seconds, details


def fairlearn_dp(example: Example, eps: float, seed: int) -> BaselineOutcome:
    """Fairlearn ``ExponentiatedGradient`` + ``DemographicParity`` over logistic regression.

    Trained on the same training features (the sensitive attribute is passed as
    ``sensitive_features``; its one-hot columns stay among the features, as for the MLP). The
    result is a randomized classifier; eval labels are drawn once with ``random_state=seed``.
    """
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    train = example.inputs.train
    mitigator = ExponentiatedGradient(LogisticRegression(max_iter=LOGREG_MAX_ITER),
                                      constraints=DemographicParity(), eps=eps)
    started = time.perf_counter()
    mitigator.fit(train.features, train.labels, sensitive_features=train.sensitive[example.sensitive])
    seconds = time.perf_counter() - started
    predicted = np.asarray(mitigator.predict(example.eval.features, random_state=seed), dtype=np.float64)
    details = {"eps": eps, "predictors": len(mitigator.predictors_),
               "oracle_calls": int(mitigator.n_oracle_calls_),
               "note": "randomized classifier: hard labels drawn once, log-loss not meaningful"}
    return _eval_metrics(example, predicted), seconds, details


def logistic_regression(example: Example, seed: int) -> BaselineOutcome:
    """The unconstrained scikit-learn logistic regression that Fairlearn reduces over."""
    from sklearn.linear_model import LogisticRegression

    train = example.inputs.train
    started = time.perf_counter()
    model = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed).fit(train.features, train.labels)
    seconds = time.perf_counter() - started
    proba = np.asarray(model.predict_proba(example.eval.features)[:, 1], dtype=np.float64)
    return _eval_metrics(example, proba), seconds, {"iterations": int(model.n_iter_[0])}
