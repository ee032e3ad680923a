"""The tabular examples, built from the vendored UCI data (``softunlearn example adult|bank``).

An example directory holds ``train.parquet``, ``audit.parquet``, ``eval.parquet`` (model-ready
float64 features, then the 0/1 label, the sensitive column as strings, and ``reference_logits``,
the baseline model's own logit per row, which the schema names so that a wrong rebuild is
refused), ``model.safetensors`` (a baseline [64, 32] ReLU MLP recording its architecture and
feature columns in its metadata), ``arch.json``, ``schema.json``, ``README.md`` and
``ATTRIBUTION`` (UCI, CC BY 4.0).

Preprocessing is fitted on the training split only: one-hot categories (a category unseen in
training encodes as all zeros) and the mean/std used to standardize numeric columns. Nothing is
downloaded; the data are the gzip files in ``workers/engine/vendor`` (see ``SOURCES.md`` there).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from workers.engine.errors import InputError
from workers.engine.examples.common import ExampleInfo, Progress
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.datasets import REFERENCE_COLUMN
from workers.engine.io.identity import checkpoint_metadata
from workers.engine.models.training import train_mlp

__all__ = ["EXAMPLE_FILES", "SETTINGS", "TabularName", "TrainSettings", "build_tabular_into"]

TabularName = Literal["adult", "bank"]

VENDOR = Path(__file__).resolve().parents[1] / "vendor"
EXAMPLE_FILES = ("train.parquet", "audit.parquet", "eval.parquet", "model.safetensors",
                 "arch.json", "schema.json", "README.md", "ATTRIBUTION")
HIDDEN = (64, 32)

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
                 "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
                 "hours_per_week", "native_country", "income"]
ADULT_NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
ADULT_CATEGORICAL = ["workclass", "education", "marital_status", "occupation", "relationship",
                     "race", "sex", "native_country"]
BANK_NUMERIC = ["age", "balance", "day", "campaign", "pdays", "previous"]
BANK_CATEGORICAL = ["job", "marital", "education", "default", "housing", "loan", "contact",
                    "month", "poutcome"]

ADULT_ATTRIBUTION = ("Becker, B. & Kohavi, R. (1996). Adult [Dataset]. UCI Machine Learning "
                     "Repository. https://doi.org/10.24432/C5XW20")
BANK_ATTRIBUTION = ("Moro, S., Rita, P. & Cortez, P. (2014). Bank Marketing [Dataset]. UCI Machine "
                    "Learning Repository. https://doi.org/10.24432/C5K306")


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of the baseline model of an example."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float


@dataclass(frozen=True)
class _Splits:
    """Raw (unencoded) splits and the notes on how they were made, for the README."""

    train: pd.DataFrame
    audit: pd.DataFrame
    eval: pd.DataFrame
    label: str
    sensitive: str
    numeric: list[str]
    categorical: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Encoder:
    """One-hot categories and standardization statistics, fitted on the training split."""

    numeric: list[str]
    categories: dict[str, list[str]]
    mean: dict[str, float]
    std: dict[str, float]


SETTINGS: dict[str, TrainSettings] = {
    "adult": TrainSettings(epochs=8, batch_size=256, lr=1e-3, weight_decay=1e-4),
    "bank": TrainSettings(epochs=8, batch_size=256, lr=1e-3, weight_decay=1e-4),
}


# ---------------------------------------------------------------------------------------------
# Reading the raw data


def _read_adult_file(path: Path, skip_comment: bool) -> pd.DataFrame:
    """One Adult file as strings and numbers; ``?`` becomes missing, labels lose a trailing '.'."""
    text_columns = [*ADULT_CATEGORICAL, "income"]
    frame = pd.read_csv(path, header=None, names=ADULT_COLUMNS, skiprows=1 if skip_comment else 0,
                        skipinitialspace=True, na_values=["?"], dtype=dict.fromkeys(text_columns, str))
    frame = frame.dropna(how="all")
    for column in text_columns:
        frame[column] = frame[column].str.strip()
    frame["income"] = (frame["income"].str.rstrip(".") == ">50K").astype(np.int64)
    return frame.drop(columns=["fnlwgt"])


def _stratified_split(strata: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Row indices of each part; within every stratum the rows are cut by ``fractions``."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for stratum in sorted(set(strata.tolist())):
        rows = rng.permutation(np.flatnonzero(strata == stratum))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(rows)).astype(np.int64)
        for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def _strata(frame: pd.DataFrame, label: str, sensitive: str) -> np.ndarray:
    """Label × sensitive-group key of every row."""
    return (frame[label].astype(str) + "|" + frame[sensitive].astype(str)).to_numpy(dtype=object)


def _adult_splits(seed: int) -> _Splits:
    """Official train file as train; the official test file split 50/50 into audit and eval."""
    train_raw = _read_adult_file(VENDOR / "adult.data.gz", skip_comment=False)
    test_raw = _read_adult_file(VENDOR / "adult.test.gz", skip_comment=True)
    train, test = train_raw.dropna(), test_raw.dropna()
    audit_rows, eval_rows = _stratified_split(_strata(test, "income", "sex"), [0.5, 0.5], seed)
    notes = [
        f"adult.data: {len(train_raw):,} rows, {len(train_raw) - len(train):,} with a missing ('?') "
        f"value dropped, {len(train):,} kept as train.",
        f"adult.test: {len(test_raw):,} rows, {len(test_raw) - len(test):,} with a missing value "
        f"dropped; the {len(test):,} kept are split 50/50 (seed {seed}, stratified by income × sex) "
        "into audit and eval.",
        "fnlwgt (a census sampling weight, not a property of the person) is dropped.",
        "sex is the sensitive column (strings Female/Male) and also enters the features one-hot "
        "(sex_Female, sex_Male), so the baseline model uses it directly.",
    ]
    return _Splits(train=train.reset_index(drop=True), audit=test.iloc[audit_rows].reset_index(drop=True),
                   eval=test.iloc[eval_rows].reset_index(drop=True), label="income", sensitive="sex",
                   numeric=ADULT_NUMERIC, categorical=ADULT_CATEGORICAL, notes=notes)


def _bank_splits(seed: int) -> _Splits:
    """bank-full split 60/20/20 into train/audit/eval, stratified by y × age_group."""
    raw = pd.read_csv(VENDOR / "bank-full.csv.gz", sep=";")
    frame = raw.drop(columns=["duration"])
    frame["y"] = (frame["y"] == "yes").astype(np.int64)
    frame["age_group"] = np.where(frame["age"] < 25, "under_25", "25_and_over")
    parts = _stratified_split(_strata(frame, "y", "age_group"), [0.6, 0.2, 0.2], seed)
    train, audit, evaluation = (frame.iloc[rows].reset_index(drop=True) for rows in parts)
    notes = [
        f"bank-full: {len(raw):,} rows, no missing values ('unknown' is kept as a category).",
        "duration (length of the last call) is dropped: it is only known after the call, and a "
        "call of 0 seconds always means y = no, so it leaks the label.",
        "age_group = 'under_25' if age < 25 else '25_and_over' is the sensitive column (the usual "
        "convention); the raw age stays as a standardized numeric feature.",
        f"split 60/20/20 into train/audit/eval (seed {seed}, stratified by y × age_group).",
    ]
    return _Splits(train=train, audit=audit, eval=evaluation, label="y", sensitive="age_group",
                   numeric=BANK_NUMERIC, categorical=BANK_CATEGORICAL, notes=notes)


# ---------------------------------------------------------------------------------------------
# Encoding


def _fit_encoder(train: pd.DataFrame, numeric: list[str], categorical: list[str]) -> _Encoder:
    """Categories and mean/std from the training split only (a constant column keeps std 1)."""
    categories = {c: sorted(str(v) for v in train[c].unique()) for c in categorical}
    mean = {c: float(train[c].astype(np.float64).mean()) for c in numeric}
    std = {c: float(train[c].astype(np.float64).std(ddof=0)) or 1.0 for c in numeric}
    return _Encoder(numeric=numeric, categories=categories, mean=mean, std=std)


def _encode(frame: pd.DataFrame, encoder: _Encoder) -> pd.DataFrame:
    """Float64 model-ready features: standardized numerics, then one-hot columns."""
    columns: dict[str, np.ndarray] = {}
    for column in encoder.numeric:
        values = frame[column].to_numpy(dtype=np.float64)
        columns[column] = (values - encoder.mean[column]) / encoder.std[column]
    for column, levels in encoder.categories.items():
        values = frame[column].astype(str).to_numpy(dtype=object)
        for level in levels:
            columns[f"{column}_{level}"] = (values == level).astype(np.float64)
    names = list(columns)
    if not all(name.isascii() for name in names):
        raise InputError(f"non-ASCII feature name in {[n for n in names if not n.isascii()]}")
    return pd.DataFrame(columns, index=frame.index)


def _model_ready(frame: pd.DataFrame, encoder: _Encoder, label: str, sensitive: str) -> pd.DataFrame:
    """Features, then the 0/1 label (int64), then the sensitive column as strings."""
    out = _encode(frame, encoder)
    out[label] = frame[label].to_numpy(dtype=np.int64)
    out[sensitive] = frame[sensitive].astype(str).to_numpy(dtype=object)
    return out


# ---------------------------------------------------------------------------------------------
# Model


def _train_baseline(train: pd.DataFrame, label: str, sensitive: str, seed: int,
                    settings: TrainSettings) -> tuple[ArchSpec, torch.nn.Sequential]:
    """The baseline [64, 32] ReLU MLP trained on the encoded training split."""
    features = train.drop(columns=[label, sensitive]).to_numpy(dtype=np.float64)
    arch = ArchSpec(in_features=features.shape[1], hidden=HIDDEN)
    model = train_mlp(arch, features, train[label].to_numpy(dtype=np.float64), seed=seed,
                      epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                      weight_decay=settings.weight_decay)
    return arch, model


def _accuracy(model: torch.nn.Sequential, frame: pd.DataFrame, label: str, sensitive: str) -> float:
    """Hard-label accuracy (sigmoid > 0.5, i.e. logit > 0)."""
    features = frame.drop(columns=[label, sensitive]).to_numpy(dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.tensor(features)).squeeze(1).numpy()
    return float(np.mean((logits > 0) == (frame[label].to_numpy() == 1)))


# ---------------------------------------------------------------------------------------------
# Writing


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Parquet without the pandas index, strings as plain Arrow strings."""
    schema = pa.schema([
        pa.field(str(c), pa.string() if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])
                 else pa.from_numpy_dtype(frame[c].dtype))
        for c in frame.columns
    ])
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)


def _write_model(model: torch.nn.Sequential, path: Path, metadata: dict[str, str]) -> None:
    """The state dict as float32 safetensors (keys ``0.weight``, ``0.bias``, ...), recording the
    architecture and the feature columns by name in its metadata."""
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def _with_reference_logits(model: torch.nn.Sequential, frame: pd.DataFrame,
                           features: list[str]) -> pd.DataFrame:
    """The frame plus the model's own logit per row (column ``reference_logits``)."""
    with torch.no_grad():
        logits = model(torch.tensor(frame[features].to_numpy(dtype=np.float32))).squeeze(1).numpy()
    return frame.assign(**{REFERENCE_COLUMN: logits.astype(np.float64)})


def _readme(name: str, splits: _Splits, info: dict[str, object], settings: TrainSettings) -> str:
    """Human description of the example: provenance, preprocessing, baseline."""
    attribution = ADULT_ATTRIBUTION if name == "adult" else BANK_ATTRIBUTION
    lines = [
        f"# SoftUnlearn example: {name}", "",
        f"Label `{splits.label}` (1 = positive), sensitive column `{splits.sensitive}` (strings). "
        f"Rows: train {info['n_train']:,}, audit {info['n_audit']:,}, eval {info['n_eval']:,}; "
        f"{info['in_features']} features.", "",
        "## Preprocessing", "",
        *[f"- {note}" for note in splits.notes],
        f"- numeric columns {', '.join(splits.numeric)} are standardized with the train mean/std.",
        f"- categorical columns {', '.join(splits.categorical)} are one-hot encoded with the "
        "categories seen in train (an unseen category encodes as all zeros).", "",
        "## Baseline model", "",
        f"`model.safetensors`: MLP {info['in_features']} -> 64 -> 32 -> 1 (ReLU), Adam, "
        f"{settings.epochs} epochs, batch {settings.batch_size}, lr {settings.lr}, weight decay "
        f"{settings.weight_decay}, seed {info['seed']}. Eval accuracy {info['eval_accuracy']:.4f}.", "",
        "## Data source and license", "", _attribution(attribution), "",
    ]
    return "\n".join(lines)


def _attribution(citation: str) -> str:
    """The CC BY 4.0 attribution text."""
    return (f"{citation}\n\nLicensed under Creative Commons Attribution 4.0 International (CC BY 4.0), "
            "https://creativecommons.org/licenses/by/4.0/. Changes: the files here are derived from "
            "the original data (columns dropped, encoded and standardized; rows split) as "
            "described in README.md.\n")


# ---------------------------------------------------------------------------------------------
# Entry point


def build_tabular_into(name: TabularName, staging: Path, seed: int, say: Progress) -> ExampleInfo:
    """Every file of the tabular example ``name``, written into ``staging``."""
    say(f"{name}: reading and splitting the vendored UCI data")
    splits = _adult_splits(seed) if name == "adult" else _bank_splits(seed)
    encoder = _fit_encoder(splits.train, splits.numeric, splits.categorical)
    frames = {role: _model_ready(getattr(splits, role), encoder, splits.label, splits.sensitive)
              for role in ("train", "audit", "eval")}
    settings = SETTINGS[name]
    say(f"{name}: training the baseline MLP on {len(frames['train']):,} rows")
    started = time.perf_counter()
    arch, model = _train_baseline(frames["train"], splits.label, splits.sensitive, seed, settings)
    seconds = time.perf_counter() - started
    accuracy = _accuracy(model, frames["eval"], splits.label, splits.sensitive)
    say(f"{name}: baseline eval accuracy {accuracy:.4f} ({seconds:.1f} s); writing files")
    features = [c for c in frames["train"].columns if c not in (splits.label, splits.sensitive)]
    for role, frame in frames.items():
        _write_parquet(_with_reference_logits(model, frame, features), staging / f"{role}.parquet")
    _write_model(model, staging / "model.safetensors", checkpoint_metadata(arch, tuple(features)))
    schema = {"label": splits.label, "sensitive": [splits.sensitive], "reference_logits": REFERENCE_COLUMN}
    (staging / "arch.json").write_text(json.dumps(arch.to_dict(), indent=2) + "\n", encoding="utf-8")
    (staging / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    facts: dict[str, object] = {"n_train": len(frames["train"]), "n_audit": len(frames["audit"]),
                                "n_eval": len(frames["eval"]), "in_features": arch.in_features,
                                "eval_accuracy": accuracy, "seed": seed}
    (staging / "README.md").write_text(_readme(name, splits, facts, settings), encoding="utf-8")
    citation = ADULT_ATTRIBUTION if name == "adult" else BANK_ATTRIBUTION
    (staging / "ATTRIBUTION").write_text(_attribution(citation), encoding="utf-8")
    return ExampleInfo(name=name, out_dir=staging, paths={}, label=splits.label,
                       sensitive=(splits.sensitive,), n_train=len(frames["train"]),
                       n_audit=len(frames["audit"]), n_eval=len(frames["eval"]),
                       in_features=arch.in_features, eval_accuracy=accuracy, train_seconds=seconds)
