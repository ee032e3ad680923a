"""MLflow hand-off of a succeeded job: one run with params, metrics and outputs, and a new version
of a registered model carrying the corrected checkpoint and its lineage.

``hand_off_mlflow(records, record, settings)`` runs in the worker after the outputs are
published and before the job is marked succeeded. It never raises: MLflow down, refusing,
slow or answering an error is a recorded warning (``JobRecord.handoffs["mlflow"]``), never a
failed correction. Its time is bounded: each request by ``SOFTUNLEARN_MLFLOW_TIMEOUT_S`` and
``..._MAX_RETRIES`` (the MLflow client's ``MLFLOW_HTTP_REQUEST_TIMEOUT`` /
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``Retry-After`` ignored), the whole by
``SOFTUNLEARN_MLFLOW_DEADLINE_S``, checked before each request.

It is safe to run twice (a job re-run after a crash): a model version tagged with the job id
ends it at once, and a run tagged with the job id is reused rather than a second one made.
The MLflow client (``softunlearn[mlflow]``, mlflow-skinny) is imported only here, lazily.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from models_store.records import Handoff, HandoffWarning, JobRecord, Records, utcnow
from workers.handoff.config import MlflowConfig, MlflowTarget, resolve_mlflow_target
from workers.redact import redact_paths
from workers.settings import ServiceSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["JOB_TAG", "PARENT_TAG", "REPORT_TAG", "TENANT_TAG", "hand_off_mlflow", "report_metrics",
           "spec_params"]

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_TAG = "softunlearn.job_id"
PARENT_TAG = "softunlearn.parent_sha256"
REPORT_TAG = "softunlearn.report_id"
TENANT_TAG = "softunlearn.tenant"
CORRECTED_TAG = "softunlearn.corrected_sha256"
TARGET_MET_TAG = "softunlearn.target_met"
MODEL_DIR = "model"
"""Run artifact folder of the corrected checkpoint: the registered version's source."""
OUTPUTS = ("report.json", "report.html", "weights.parquet", "model.safetensors")
MAX_PARAM_CHARS = 6000
"""MLflow's limit on a param value."""
BATCH = 100
"""MLflow's limit of params (and tags) in one log_batch request."""
MAX_MESSAGE_CHARS = 400


class _DeadlinePassed(Exception):
    """The hand-off ran past SOFTUNLEARN_MLFLOW_DEADLINE_S."""


def hand_off_mlflow(records: Records, record: JobRecord, settings: ServiceSettings) -> Handoff | None:
    """Log the succeeded job ``record`` to MLflow and register its corrected model, when the job
    or its tenant configures MLflow; the outcome is written into the manifest and returned.

    Returns:
        The outcome (``registered``, ``failed`` with a warning, or ``skipped`` when the worker has
        no MLflow client), or None when no MLflow hand-off is configured.
    """
    try:
        target = resolve_mlflow_target(_requested(record), record.tenant, settings)
    except ValueError as exc:  # MlflowRefused: the settings changed since the job was submitted
        message = " ".join(str(exc).split())[:MAX_MESSAGE_CHARS]
        outcome = Handoff(status="failed", warning=HandoffWarning(code="mlflow_not_allowed", message=message))
    else:
        if target is None:
            return None
        outcome = _hand_off(records, record, target, settings)
    outcome.finished_at = utcnow()
    if outcome.warning is not None:
        log.warning("job %s: MLflow hand-off %s: %s: %s", record.id, outcome.status, outcome.warning.code,
                    outcome.warning.message)
    else:
        log.info("job %s: registered %s version %s (MLflow run %s)", record.id, outcome.registered_model,
                 outcome.model_version, outcome.run_id)

    def change(current: JobRecord) -> JobRecord:
        current.handoffs = {**current.handoffs, "mlflow": outcome}
        return current

    records.update_job(record.tenant, record.id, change)
    return outcome


def _requested(record: JobRecord) -> MlflowConfig | None:
    raw = record.request.get("mlflow")
    return None if raw is None else MlflowConfig.model_validate(raw)


@dataclass
class _Progress:
    """What the hand-off has done so far (for a failure's record) and the deadline."""

    deadline: float
    step: str = "starting"
    run_id: str | None = None
    experiment_id: str | None = None

    def call(self, step: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One request to MLflow, refused once the deadline has passed."""
        if time.monotonic() > self.deadline:
            raise _DeadlinePassed(step)
        self.step = step
        return function(*args, **kwargs)


def _hand_off(records: Records, record: JobRecord, target: MlflowTarget,
              settings: ServiceSettings) -> Handoff:
    progress = _Progress(deadline=time.monotonic() + settings.mlflow_deadline_s)
    try:
        with _client_environment(settings), ExitStack() as stack:
            try:
                from mlflow import MlflowClient
            except ImportError:
                missing = HandoffWarning(code="mlflow_not_installed", message="this worker has no MLflow "
                                         "client; install softunlearn[mlflow] on the workers")
                return Handoff(status="skipped", registered_model=target.registered_model, warning=missing)
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softunlearn-mlflow-")))
            report = _stage_outputs(records, record, folder, stack)
            client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
            version = _log_and_register(client, target, record, report, folder, progress, settings)
    except Exception as exc:  # any failure of the hand-off is a warning, never a failed job
        return Handoff(status="failed", run_id=progress.run_id, experiment_id=progress.experiment_id,
                       registered_model=target.registered_model, warning=_warning(exc, progress.step))
    return Handoff(status="registered", run_id=progress.run_id, experiment_id=progress.experiment_id,
                   registered_model=target.registered_model, model_version=version)


@contextmanager
def _client_environment(settings: ServiceSettings) -> Iterator[None]:
    """The MLflow client's request bounds (it reads them from the environment at each request),
    restored afterwards; its usage telemetry is off (a worker does not call out elsewhere)."""
    values = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.mlflow_timeout_s),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.mlflow_max_retries),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
              "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stage_outputs(records: Records, record: JobRecord, folder: Path, stack: ExitStack) -> dict[str, Any]:
    """Link the published outputs into ``folder`` as the run's artifact layout; returns the report."""
    (folder / MODEL_DIR).mkdir()
    report: dict[str, Any] = {}
    for name in OUTPUTS:
        key = records.output_key(record.tenant, record.id, name)
        source = stack.enter_context(records.store.local_path(key))
        link = folder / (f"{MODEL_DIR}/{name}" if name == "model.safetensors" else name)
        link.symlink_to(source.resolve())
        if name == "report.json":
            report = json.loads(source.read_text(encoding="utf-8"))
    return report


def _log_and_register(client: MlflowClient, target: MlflowTarget, record: JobRecord, report: dict[str, Any],
                      folder: Path, progress: _Progress, settings: ServiceSettings) -> str:
    """The hand-off proper; returns the model version registered for this job."""
    from mlflow.entities import Metric, Param, RunTag

    tags = _lineage_tags(record, report)
    done = progress.call("searching model versions", client.search_model_versions,
                         f"name = '{target.registered_model}' and tags.`{JOB_TAG}` = '{record.id}'")
    if done:  # a re-run of a job whose hand-off went through: nothing more to register
        progress.run_id = done[0].run_id
        earlier = progress.call("reading the run", client.get_run, done[0].run_id)
        progress.experiment_id = earlier.info.experiment_id
        if earlier.info.status != "FINISHED":
            progress.call("ending the run", client.set_terminated, earlier.info.run_id, "FINISHED")
        return str(done[0].version)
    experiment_id = progress.experiment_id = _experiment_id(client, target.experiment, progress)
    runs = progress.call("searching runs", client.search_runs, [experiment_id],
                         f"tags.`{JOB_TAG}` = '{record.id}'", max_results=1)
    if runs:
        run = runs[0]
    else:
        run = progress.call("creating the run", client.create_run, experiment_id, tags=tags,
                            run_name=f"softunlearn-{record.id[:8]}")
    run_id = progress.run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, value) for key, value in spec_params(record.spec).items()]
    metrics = [Metric(key, value, now, 0) for key, value in report_metrics(report).items()]
    for start in range(0, max(len(params), len(metrics)), BATCH):
        progress.call("logging params and metrics", client.log_batch, run_id,
                      metrics=metrics[start:start + BATCH], params=params[start:start + BATCH],
                      synchronous=True)
    progress.call("logging tags", client.log_batch, run_id,
                  tags=[RunTag(key, value) for key, value in tags.items()], synchronous=True)
    progress.call("uploading the outputs", client.log_artifacts, run_id, str(folder))
    progress.call("creating the registered model", _ensure_registered_model, client, target.registered_model)
    version = progress.call("registering the model version", client.create_model_version,
                            target.registered_model, f"{run.info.artifact_uri}/{MODEL_DIR}", run_id=run_id,
                            tags=tags, description=_description(report),
                            await_creation_for=settings.mlflow_timeout_s)
    progress.call("ending the run", client.set_terminated, run_id, "FINISHED")
    return str(version.version)


def _experiment_id(client: MlflowClient, name: str, progress: _Progress) -> str:
    from mlflow.exceptions import RestException

    found = progress.call("looking up the experiment", client.get_experiment_by_name, name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(progress.call("creating the experiment", client.create_experiment, name))
    except RestException as exc:  # created meanwhile by another job
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = progress.call("looking up the experiment", client.get_experiment_by_name, name)
        if again is None:
            raise
        return str(again.experiment_id)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import RestException

    try:
        client.create_registered_model(name, description="Checkpoints corrected by SoftUnlearn")
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _lineage_tags(record: JobRecord, report: Mapping[str, Any]) -> dict[str, str]:
    provenance = report.get("provenance") or {}
    tags = {JOB_TAG: record.id, TENANT_TAG: record.tenant, PARENT_TAG: provenance.get("model_sha256"),
            REPORT_TAG: provenance.get("report_id"), CORRECTED_TAG: provenance.get("corrected_model_sha256"),
            TARGET_MET_TAG: json.dumps(bool(report.get("target_met")))}
    return {key: str(value) for key, value in tags.items() if value is not None}


def _description(report: Mapping[str, Any]) -> str:
    headline = (report.get("target") or {}).get("headline")
    return str(headline) if headline else "Corrected by SoftUnlearn"


def spec_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved job spec flattened to MLflow params: ``objective.metric`` → ``demographic_parity``
    (strings as they are, other values as JSON; a value past MLflow's 6000 characters is cut)."""
    params: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(spec_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text[:MAX_PARAM_CHARS]
    return params


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics: ``before|after.SPLIT.METRIC`` and, where the report
    has bootstrap intervals, ``before|after.SPLIT.METRIC.low|high`` and
    ``after.SPLIT.METRIC.change`` / ``.change_low`` / ``.change_high``; ``target_met`` (1 or 0)."""
    metrics: dict[str, float] = {"target_met": 1.0 if report.get("target_met") else 0.0}
    for phase in ("before", "after"):
        for split, values in (report.get(phase) or {}).items():
            if isinstance(values, Mapping):
                metrics.update({f"{phase}.{split}.{name}": float(value) for name, value in values.items()
                                if _number(value)})
    for split, by_metric in (report.get("confidence") or {}).items():
        if not isinstance(by_metric, Mapping):
            continue
        for name, interval in by_metric.items():
            if not isinstance(interval, Mapping):
                continue
            found: dict[str, Any] = {f"{phase}.{split}.{name}.{bound}": (interval.get(phase) or {}).get(bound)
                     for phase in ("before", "after") for bound in ("low", "high")}
            change = interval.get("change") or {}
            found |= {f"after.{split}.{name}.change": change.get("estimate"),
                      f"after.{split}.{name}.change_low": change.get("low"),
                      f"after.{split}.{name}.change_high": change.get("high")}
            metrics.update({key: float(value) for key, value in found.items() if _number(value)})
    return metrics


def _warning(exc: BaseException, step: str) -> HandoffWarning:
    """The recorded warning of a failed hand-off: unreachable (refused, timed out), the deadline,
    or an error answer from MLflow."""
    from mlflow.exceptions import MlflowException, RestException  # imported: the hand-off got past it

    if isinstance(exc, _DeadlinePassed):
        return HandoffWarning(code="mlflow_timeout", message=f"the MLflow hand-off ran past "
                              f"SOFTUNLEARN_MLFLOW_DEADLINE_S before {step}; the job's outputs are intact")
    text = redact_paths(" ".join(str(exc).split()))[:MAX_MESSAGE_CHARS]
    if isinstance(exc, RestException):
        return HandoffWarning(code="mlflow_error",
                              message=f"MLflow refused {step} ({exc.error_code}): {text}")
    unreachable = isinstance(exc, MlflowException) and str(exc).startswith("API request to")
    if unreachable or isinstance(exc, (ConnectionError, TimeoutError)):
        return HandoffWarning(code="mlflow_unreachable", message=f"could not reach the MLflow tracking "
                              f"server while {step}: {text}")
    return HandoffWarning(code="mlflow_error", message=f"{step} failed ({type(exc).__name__}): {text}")
