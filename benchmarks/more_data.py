"""Two more benchmark data sets, COMPAS and German credit, built like the shipped examples.

The raw files are vendored under ``benchmarks/data/`` (see ``SOURCES.md`` there; nothing is
downloaded). Preprocessing follows ``workers/engine/examples/tabular.py`` and reuses its encoder: one-hot
categoricals and standardized numerics fitted on the training split, a stratified 60/20/20
train/audit/eval split (label × sensitive group) and the baseline 64-32 ReLU MLP trained with a
fixed seed. The examples are built in memory (no parquet files); the result is the same
:class:`benchmarks.engine_runs.Example` the shipped examples load into.

- ``compas``: ProPublica's ``compas-scores-two-years.csv`` with their filter
  (``days_b_screening_arrest`` within ±30, ``is_recid != -1``, ``c_charge_degree != 'O'``,
  ``score_text`` present) → 6,172 rows; only African-American and Caucasian defendants are kept
  (5,278 rows; the other four groups have 11–509 rows, too few for a 20 % eval split); label
  ``two_year_recid`` (1 = re-offended within two years), sensitive ``race``. Features: sex,
  age, juvenile felony/misdemeanour/other counts, priors count, charge degree and race (one-hot,
  as ``sex`` is for Adult). The COMPAS score itself (``decile_score``/``score_text``) is not a
  feature.
- ``german``: UCI Statlog German credit (``german.data``, 1,000 rows, 20 attributes); label
  1 = good credit (class 1), sensitive ``age_group`` = ``over_25`` if age > 25 else
  ``25_and_under``; age stays a standardized numeric feature (as for Bank).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from benchmarks.engine_runs import Example, prepare_example
from workers.engine.examples.common import ExampleInfo
from workers.engine.examples.tabular import (
    HIDDEN,
    TrainSettings,
    _fit_encoder,
    _model_ready,
    _strata,
    _stratified_split,
)
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.datasets import Dataset
from workers.engine.models.training import train_mlp
from workers.engine.pipeline import CorrectionInputs

__all__ = ["DATA", "DATASETS", "MORE_SETTINGS", "BenchName", "prepare"]

BenchName = Literal["adult", "bank", "compas", "german"]
DATASETS: tuple[BenchName, ...] = ("adult", "bank", "compas", "german")
DATA = Path(__file__).resolve().parent / "data"
COMPAS_FILE = DATA / "compas-scores-two-years.subset.csv.gz"
GERMAN_FILE = DATA / "german.data.gz"

MORE_SETTINGS: dict[str, TrainSettings] = {
    # Smaller data sets: more epochs and smaller batches than Adult/Bank (8 epochs, batch 256),
    # so that the baseline sees a comparable number of Adam steps.
    "compas": TrainSettings(epochs=20, batch_size=128, lr=1e-3, weight_decay=1e-4),
    "german": TrainSettings(epochs=60, batch_size=64, lr=1e-3, weight_decay=1e-4),
}

COMPAS_NUMERIC = ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
COMPAS_CATEGORICAL = ["sex", "c_charge_degree", "race"]
COMPAS_RACES = ("African-American", "Caucasian")

GERMAN_COLUMNS = ["checking", "duration", "credit_history", "purpose", "credit_amount", "savings",
                  "employment", "installment_rate", "personal_status_sex", "other_debtors",
                  "residence_since", "property", "age", "other_installment", "housing",
                  "existing_credits", "job", "num_liable", "telephone", "foreign_worker", "class"]
GERMAN_NUMERIC = ["duration", "credit_amount", "installment_rate", "residence_since", "age",
                  "existing_credits", "num_liable"]
GERMAN_CATEGORICAL = ["checking", "credit_history", "purpose", "savings", "employment",
                      "personal_status_sex", "other_debtors", "property", "other_installment",
                      "housing", "job", "telephone", "foreign_worker"]


def compas_frame() -> pd.DataFrame:
    """The filtered COMPAS rows (African-American and Caucasian), label and sensitive columns."""
    raw = pd.read_csv(COMPAS_FILE, keep_default_na=False, na_values=[""])
    keep = (raw["days_b_screening_arrest"].between(-30, 30) & (raw["is_recid"] != -1)
            & (raw["c_charge_degree"] != "O") & raw["score_text"].notna()
            & (raw["score_text"] != "N/A") & raw["race"].isin(COMPAS_RACES))
    frame = raw.loc[keep].reset_index(drop=True)
    frame["two_year_recid"] = frame["two_year_recid"].astype(np.int64)
    return frame


def german_frame() -> pd.DataFrame:
    """The 1,000 German credit rows with label ``good`` and sensitive ``age_group``."""
    frame = pd.read_csv(GERMAN_FILE, sep=r"\s+", header=None, names=GERMAN_COLUMNS)
    frame["good"] = (frame["class"] == 1).astype(np.int64)
    frame["age_group"] = np.where(frame["age"] > 25, "over_25", "25_and_under")
    return frame.drop(columns=["class"])


def _dataset(frame: pd.DataFrame, label: str, sensitive: str, role: str) -> Dataset:
    features = frame.drop(columns=[label, sensitive])
    return Dataset(name=role, feature_names=tuple(str(c) for c in features.columns),
                   features=features.to_numpy(dtype=np.float64, copy=True),
                   labels=frame[label].to_numpy(dtype=np.float64),
                   sensitive={sensitive: frame[sensitive].astype(str).to_numpy(dtype=object)})


def _build(name: Literal["compas", "german"], seed: int) -> Example:
    started = time.perf_counter()
    if name == "compas":
        frame, label, sensitive = compas_frame(), "two_year_recid", "race"
        numeric, categorical = COMPAS_NUMERIC, COMPAS_CATEGORICAL
    else:
        frame, label, sensitive = german_frame(), "good", "age_group"
        numeric, categorical = GERMAN_NUMERIC, GERMAN_CATEGORICAL
    parts = _stratified_split(_strata(frame, label, sensitive), [0.6, 0.2, 0.2], seed)
    raw = [frame.iloc[rows].reset_index(drop=True) for rows in parts]
    encoder = _fit_encoder(raw[0], numeric, categorical)
    ready = [_model_ready(part, encoder, label, sensitive) for part in raw]
    train, audit, evaluation = (_dataset(f, label, sensitive, role)
                                for f, role in zip(ready, ("train", "audit", "eval"), strict=True))
    settings = MORE_SETTINGS[name]
    arch = ArchSpec(in_features=train.features.shape[1], hidden=HIDDEN)
    fit_started = time.perf_counter()
    model = train_mlp(arch, train.features, train.labels, seed=seed, epochs=settings.epochs,
                      batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay)
    train_seconds = time.perf_counter() - fit_started
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(torch.as_tensor(evaluation.features, dtype=torch.float32)).squeeze(1).numpy()
    accuracy = float(np.mean((logits > 0) == (evaluation.labels == 1)))
    info = ExampleInfo(name=name, out_dir=DATA, paths={}, label=label, sensitive=(sensitive,),
                       n_train=train.n, n_audit=audit.n, n_eval=evaluation.n,
                       in_features=arch.in_features, eval_accuracy=accuracy, train_seconds=train_seconds)
    inputs = CorrectionInputs(arch, state, train, audit, evaluation)
    return Example(name, info, inputs, sensitive, settings, time.perf_counter() - started)


def prepare(name: BenchName, root: Path, seed: int) -> Example:
    """Any of the four benchmark data sets, split and trained with ``seed``."""
    if name == "adult" or name == "bank":
        return prepare_example(name, root, seed)
    return _build(name, seed)
