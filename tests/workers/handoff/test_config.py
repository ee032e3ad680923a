"""Which MLflow server a job hands off to: the job's ``mlflow`` field over its tenant's setting,
and only URIs the operator allowed (no server needed)."""

from __future__ import annotations

import pytest

from workers.handoff.config import MlflowConfig, MlflowRefused, MlflowTarget, resolve_mlflow_target
from workers.settings import ServiceSettings

TENANT_URI = "https://mlflow.acme.example"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """Settings read from the environment as a worker would: acme has its own server."""
    monkeypatch.setenv("SOFTUNLEARN_MLFLOW_TENANTS",
                       f'{{"acme": {{"tracking_uri": "{TENANT_URI}", "registered_model": "credit"}}}}')
    monkeypatch.setenv("SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS", "http://a.example:5000, http://b.example")
    return ServiceSettings()


def test_a_tenants_server_is_used_and_allowed_without_the_allow_list(settings: ServiceSettings) -> None:
    own = resolve_mlflow_target(None, "acme", settings)
    assert own == MlflowTarget(TENANT_URI, "softunlearn", "credit")
    requested = MlflowConfig(tracking_uri=TENANT_URI, experiment="fairness")
    overridden = resolve_mlflow_target(requested, "acme", settings)
    assert overridden == MlflowTarget(TENANT_URI, "fairness", "credit")


def test_a_job_may_name_an_allowed_server_else_none_is_configured(settings: ServiceSettings) -> None:
    requested = MlflowConfig(tracking_uri="http://b.example", registered_model="m")
    expected = MlflowTarget("http://b.example", "softunlearn", "m")
    assert resolve_mlflow_target(requested, "acme", settings) == expected
    assert resolve_mlflow_target(requested, "globex", settings) == expected
    assert resolve_mlflow_target(None, "globex", settings) is None


def test_another_tenants_server_is_not_allowed(settings: ServiceSettings) -> None:
    with pytest.raises(MlflowRefused) as refused:
        resolve_mlflow_target(MlflowConfig(tracking_uri=TENANT_URI, registered_model="m"), "globex", settings)
    assert refused.value.field == "mlflow.tracking_uri"
    assert "SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS" in refused.value.message
