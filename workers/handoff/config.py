"""Which MLflow server a job hands off to: the job's ``mlflow`` field over its tenant's setting.

Torch-free and MLflow-free: the API checks a job's configuration with it at submission (422
naming the field) and the worker resolves it again when the job has run. A job-supplied tracking
URI makes the worker connect to a URL of the user's choosing, so only the URIs the operator
allowed are accepted: those listed in ``SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS`` (exact
strings) and the job's tenant's own one from ``SOFTUNLEARN_MLFLOW_TENANTS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from workers.settings import ServiceSettings

__all__ = ["EXPERIMENT_PATTERN", "REGISTERED_MODEL_PATTERN", "MlflowConfig", "MlflowRefused", "MlflowTarget",
           "resolve_mlflow_target"]

EXPERIMENT_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9 _.\-/]{0,249}$"
"""Experiment names: letters, digits, space, ``_ . - /`` (Databricks-style paths), at most 250."""
REGISTERED_MODEL_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}$"
"""Registered model names: letters, digits, ``_ . -`` (``catalog.schema.model`` fits), at most 250."""
DEFAULT_EXPERIMENT = "softunlearn"
ALLOW_SETTING = "SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS"
TENANT_SETTING = "SOFTUNLEARN_MLFLOW_TENANTS"


class MlflowConfig(BaseModel):
    """Where a job's results go in MLflow; a field left out comes from the tenant's setting."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "tracking_uri": "https://mlflow.example.com", "experiment": "fairness-corrections",
        "registered_model": "credit-scoring"}]})

    tracking_uri: str | None = Field(default=None, min_length=1, max_length=2048, description=(
        f"MLflow tracking server; must be the tenant's configured one or listed in {ALLOW_SETTING}."))
    experiment: str | None = Field(default=None, pattern=EXPERIMENT_PATTERN, description=(
        f"Experiment of the run (created when missing); default: the tenant's, else {DEFAULT_EXPERIMENT!r}."))
    registered_model: str | None = Field(default=None, pattern=REGISTERED_MODEL_PATTERN, description=(
        "Registered model that gets the corrected checkpoint as a new version; default: the tenant's."))


@dataclass(frozen=True)
class MlflowTarget:
    """A resolved, allowed hand-off destination."""

    tracking_uri: str
    experiment: str
    registered_model: str


class MlflowRefused(ValueError):
    """A job's MLflow configuration that cannot be used; ``field`` names the part to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def resolve_mlflow_target(requested: MlflowConfig | None, tenant: str,
                          settings: ServiceSettings) -> MlflowTarget | None:
    """The destination of ``tenant``'s job with ``requested`` (its ``mlflow`` field, or None).

    Returns None when neither the job nor the tenant configures MLflow (no hand-off).

    Raises:
        MlflowRefused: the tracking URI is not allowed, or no tracking URI or registered model
            is named by the job or the tenant.
    """
    own = settings.mlflow_tenants.get(tenant)
    if requested is None and own is None:
        return None
    requested, own = requested or MlflowConfig(), own or MlflowConfig()
    uri = requested.tracking_uri or own.tracking_uri
    if uri is None:
        raise MlflowRefused("mlflow.tracking_uri",
                            f"required: this tenant has no MLflow server in {TENANT_SETTING}")
    if uri != own.tracking_uri and uri not in settings.mlflow_allowed_tracking_uris_list:
        raise MlflowRefused("mlflow.tracking_uri", "is not an MLflow tracking URI this service may connect "
                            f"to; the operator allows URIs with {ALLOW_SETTING} (exact strings)")
    model = requested.registered_model or own.registered_model
    if model is None:
        raise MlflowRefused("mlflow.registered_model", "required: name the registered model that gets the "
                            "corrected checkpoint as a new version")
    experiment = requested.experiment or own.experiment or DEFAULT_EXPERIMENT
    return MlflowTarget(tracking_uri=uri, experiment=experiment, registered_model=model)
