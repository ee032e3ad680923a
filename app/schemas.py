"""Request and response models of the v1 API (pydantic v2), with examples.

The job spec reuses the engine's torch-free config dataclasses as field types, so the API refuses
exactly what the engine would refuse, and new engine options (e.g. another ``method.name``)
appear here without edits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.config import (
    EvaluationConfig,
    GuardConfig,
    InfluenceConfig,
    MethodConfig,
    ObjectiveConfig,
    WeightingConfig,
    spec_from_dict,
)
from workers.handoff.config import MlflowConfig

__all__ = [
    "SPEC_PARTS",
    "DatasetList",
    "DatasetPublic",
    "HandoffPublic",
    "Health",
    "JobCreate",
    "JobErrorPublic",
    "JobList",
    "JobPublic",
    "ModelList",
    "ModelPublic",
    "NotificationPublic",
    "NotifyConfig",
    "Problem",
    "Readiness",
    "VersionPublic",
    "WebhookSecret",
]

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
SPEC_PARTS = ("objective", "weighting", "method", "influence", "evaluation", "guard", "seed")
"""Fields of :class:`JobCreate` that make up the engine's CorrectionSpec."""
_EXAMPLE_ID = "3f1c2a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = Field(examples=["urn:softunlearn:problem:validation_error"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str = Field(description="Stable machine-readable error code.", examples=["validation_error"])
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Per-field problems: {field, message}.",
    )


class ModelPublic(BaseModel):
    """An uploaded checkpoint."""

    id: str
    kind: Literal["model"] = "model"
    sha256: str
    size_bytes: int
    filename: str | None = Field(default=None, description="The client's file name, as metadata only.")
    format: Literal["safetensors"] = "safetensors"
    architecture: dict[str, Any]
    created_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _EXAMPLE_ID, "kind": "model", "sha256": "9b" * 32, "size_bytes": 35500,
        "filename": "model.safetensors", "format": "safetensors",
        "architecture": {"type": "mlp", "in_features": 103, "hidden": [64, 32], "activation": "relu"},
        "created_at": "2026-01-01T00:00:00Z",
    }]})


class DatasetPublic(BaseModel):
    """An uploaded dataset and what was found in it."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{
        "id": _EXAMPLE_ID, "kind": "dataset", "sha256": "4e" * 32, "size_bytes": 309068,
        "filename": "train.parquet", "format": "parquet",
        "schema": {"label": "income", "sensitive": ["sex"]}, "n_rows": 30162,
        "columns": ["age", "sex", "income"], "feature_names": ["age"], "groups": {"sex": ["Female", "Male"]},
        "created_at": "2026-01-01T00:00:00Z",
    }]})

    id: str
    kind: Literal["dataset"] = "dataset"
    sha256: str
    size_bytes: int
    filename: str | None = None
    format: Literal["parquet", "csv", "safetensors"]
    dataset_schema: dict[str, Any] = Field(alias="schema")
    n_rows: int
    columns: list[str]
    feature_names: list[str]
    groups: dict[str, list[str]] = Field(description="Distinct values of each sensitive column (≤ 100).")
    created_at: datetime


class NotifyConfig(BaseModel):
    """Where to POST the job's signed webhook event when it ends (docs/SERVICE.md, Webhooks)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, examples=["https://hooks.example.com/softunlearn"],
                     description="https by default; the operator's policy decides which hosts may be called.")


class JobCreate(BaseModel):
    """A correction job: which model and data, and what to correct."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model_id": _EXAMPLE_ID,
        "train_dataset_id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "audit_dataset_id": "1b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e",
        "eval_dataset_id": "2c3d4e5f-6a7b-4c8d-8e9f-1a2b3c4d5e6f",
        "objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "reduction": 0.9,
                      "utility_tolerance": 0.0},
        "weighting": {"scheme": "soft-2.3"},
        "method": {"name": "newton"},
    }]})

    model_id: str = Field(pattern=ID_PATTERN)
    train_dataset_id: str = Field(pattern=ID_PATTERN)
    audit_dataset_id: str = Field(pattern=ID_PATTERN)
    eval_dataset_id: str | None = Field(default=None, pattern=ID_PATTERN)
    objective: ObjectiveConfig
    weighting: WeightingConfig | None = Field(default=None, description="Default: scheme soft-2.3.")
    method: MethodConfig | None = Field(default=None, description="Default: name newton.")
    influence: InfluenceConfig | None = None
    evaluation: EvaluationConfig | None = None
    guard: GuardConfig | None = Field(default=None, description="When a correction step is accepted.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    queue: Literal["cpu", "gpu"] | None = Field(default=None, description="Worker queue (default: server's).")
    mlflow: MlflowConfig | None = Field(default=None, description=(
        "Hand the results to MLflow on success (run, artifacts, a new registered model version); "
        "parts left out come from the tenant's setting."))
    notify: NotifyConfig | None = Field(default=None, description="A webhook for the job's terminal state.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_spec_fields(cls, data: Any) -> Any:
        """Run the engine's own spec parser, which refuses unknown nested fields by name."""
        if isinstance(data, dict):
            parts = {k: data[k] for k in SPEC_PARTS if data.get(k) is not None}
            if all(isinstance(v, dict) for k, v in parts.items() if k != "seed"):
                spec_from_dict(parts)
        return data


class JobErrorPublic(BaseModel):
    """Why a job failed."""

    code: str = Field(examples=["infeasible"])
    message: str


class HandoffWarningPublic(BaseModel):
    """Why a hand-off was not done."""

    code: str = Field(examples=["mlflow_unreachable"])
    message: str


class HandoffPublic(BaseModel):
    """The outcome of a hand-off of a succeeded job's outputs (never a reason for the job to fail)."""

    status: Literal["registered", "failed", "skipped"]
    run_id: str | None = Field(default=None, description="MLflow run holding params, metrics and outputs.")
    experiment_id: str | None = None
    registered_model: str | None = None
    model_version: str | None = Field(default=None, description="The version this job registered.")
    warning: HandoffWarningPublic | None = None
    finished_at: datetime | None = None
class NotificationPublic(BaseModel):
    """One delivery attempt of the job's webhook event."""

    event_id: str = Field(description="The webhook-id header (the same for every attempt of one event).")
    type: str = Field(examples=["job.succeeded"])
    url: str = Field(description="The notify URL without its query string.")
    attempt: int
    at: datetime
    status_code: int | None = Field(default=None, description="The receiver's HTTP status; null: no answer.")
    error: str | None = None
    delivered: bool
    next_attempt_at: datetime | None = Field(default=None, description="When the next retry is due; null: "
                                             "no more attempts.")


class WebhookSecret(BaseModel):
    """The secret that signs this tenant's webhooks (Standard Webhooks, ``whsec_`` + base64)."""

    secret: str = Field(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class JobPublic(BaseModel):
    """A job's status; the outputs are under ``links`` once it has ``succeeded``."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    stage: str | None = Field(default=None, description="load, polish, influence, weights, unlearn, "
                              "evaluate, report, done.")
    progress: float = Field(ge=0, le=1)
    error: JobErrorPublic | None = None
    cancel_requested: bool = False
    attempts: int
    queue: str
    device: str | None = None
    threads: int | None = Field(default=None, description=(
        "Threads (torch intra-op, BLAS) of the work horse that ran the latest attempt "
        "(SOFTUNLEARN_WORKER_THREADS)."))
    model_id: str
    train_dataset_id: str
    audit_dataset_id: str
    eval_dataset_id: str | None = None
    spec: dict[str, Any] = Field(description="The resolved CorrectionSpec (every default filled in).")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: dict[str, str]
    handoffs: dict[str, HandoffPublic] = Field(default_factory=dict, description=(
        "Hand-off outcomes by target (``mlflow``), once the job has succeeded."))
    notifications: list[NotificationPublic] = Field(
        default_factory=list, description="Webhook delivery attempts (notify.url), the latest last.")


class FrontierPublic(BaseModel):
    """The trade-off frontier of a succeeded job's report."""

    job_id: str
    report_id: str | None = Field(default=None, description="provenance.report_id of the report.")
    decision_split: str | None = Field(default=None, description="eval when the job has one, else audit.")
    target_metric: str | None = Field(default=None, description="The hard-label metric of the target.")
    frontier: list[dict[str, Any]] = Field(description=(
        "Points {scheme, reduction | k_fraction, audit: {...}, eval: {...}, predicted, weights, guard}; "
        "the split objects have the keys of report.before/after."))
    frontier_info: dict[str, Any] = Field(description="How the points were made: step, scheme, grids, "
                                          "seconds, skipped, notes.")


class JobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, or null on the last page.")


class VersionPublic(BaseModel):
    """What answers: the package version and the API version it serves."""

    name: Literal["softunlearn"] = "softunlearn"
    version: str = Field(examples=["1.1.0"], description="The package version (semantic versioning).")
    api_version: str = Field(examples=["v1"], description="The API's path prefix.")


class ModelList(BaseModel):
    """One page of the tenant's models, ordered by id (only those with ``sha256`` when asked)."""

    items: list[ModelPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, or null on the last page.")


class DatasetList(BaseModel):
    """One page of the tenant's datasets, ordered by id (only those with ``sha256`` when asked)."""

    items: list[DatasetPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page, or null on the last page.")


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: every dependency answered."""

    status: Literal["ready"] = "ready"
    checks: dict[str, str]
