"""Service settings shared by the API and the workers, read from the environment.

No torch and no FastAPI here. Every setting is listed in docs/SERVICE.md; the names
``REDIS_URL``, ``SOFTUNLEARN_STORE`` and ``SOFTUNLEARN_API_KEYS`` are fixed by PRODUCT.md, the
others carry the ``SOFTUNLEARN_`` prefix.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.handoff.config import MlflowConfig

__all__ = ["DEFAULT_REDIS_URL", "DEFAULT_STORE", "ServiceSettings", "get_settings", "url_with_password"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STORE = Path("~/.softunlearn/store")
MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Configuration of ``softunlearn serve`` and ``softunlearn worker``."""

    model_config = SettingsConfigDict(env_prefix="SOFTUNLEARN_", populate_by_name=True, extra="ignore",
                                      env_ignore_empty=True, hide_input_in_errors=True)  # never echo secrets

    redis_url: str = Field(default=DEFAULT_REDIS_URL,
                           validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    """Redis used as the job transport (not the record of truth)."""
    redis_password: SecretStr | None = None
    """Password put into ``redis_url`` percent-encoded, so any character is safe in it."""
    store: Path | str = DEFAULT_STORE
    """Where artifacts and job manifests live: a directory (the local store, on one host), or
    ``s3://bucket/prefix`` (an S3-compatible store that API and workers on any hosts share)."""
    s3_endpoint_url: str | None = None
    """Endpoint of the S3-compatible store (MinIO, Ceph, ...); unset: boto3's own choice
    (``AWS_ENDPOINT_URL``, else AWS S3). Credentials and region: the usual ``AWS_*`` variables."""
    api_keys: str = ""
    """Comma-separated ``tenant:key`` pairs."""
    api_keys_file: Path | None = None
    """File of ``tenant:key`` or ``tenant:sha256:HEX`` lines (``#`` comments allowed)."""
    max_model_bytes: int = Field(default=512 * MiB, gt=0)
    """Largest checkpoint upload; 413 past it."""
    max_dataset_bytes: int = Field(default=512 * MiB, gt=0)
    """Largest dataset upload; 413 past it."""
    # --- dataset caps, checked from a file's metadata before any value is decoded (413 dataset_too_large)
    max_dataset_rows: int = Field(default=20_000_000, gt=0)
    """Most rows of an uploaded dataset (Parquet footer, CSV line count, tensor ``x`` rows)."""
    max_dataset_columns: int = Field(default=10_000, gt=0)
    """Most columns of an uploaded dataset (a CSV header is read alone, at most 1 MiB)."""
    max_dataset_decoded_bytes: int = Field(default=8 * 1024 * MiB, gt=0)
    """Largest estimated decoded size of the columns a dataset's schema uses (8 bytes a cell, more
    for strings): what a worker's full load allocates. The API itself validates in bounded chunks."""
    # --- end of dataset caps
    queue_prefix: str = Field(default="softunlearn", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    """RQ queues are named ``PREFIX:cpu`` and ``PREFIX:gpu``."""
    default_queue: Literal["cpu", "gpu"] = "cpu"
    """Queue of a job that names none."""
    worker_queues: str | None = None
    """Queues a worker listens on; default ``gpu,cpu`` with CUDA, else ``cpu``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Worker device; ``auto`` is CUDA when present, else CPU."""
    worker_threads: int | None = Field(default=None, ge=0, le=1024)
    """Threads of each work horse (torch, BLAS, OpenMP); unset: the CPUs the worker may use
    (affinity, cgroup quota) divided by ``workers_per_host``; 0: the libraries' defaults (one per
    core in every horse). ``softunlearn worker --threads`` overrides it."""
    workers_per_host: int = Field(default=1, ge=1, le=1024)
    """Workers sharing this host's CPUs (used only when ``worker_threads`` is unset);
    ``softunlearn worker --workers-per-host`` overrides it."""
    job_timeout_s: int = Field(default=3600, gt=0)
    """RQ ``job_timeout``: a job running longer is killed and failed."""
    job_retries: int = Field(default=1, ge=0, le=10)
    """RQ ``Retry(max=N)``: re-runs after a crash of the work horse (OOM kill, node loss)."""
    result_ttl_s: int = Field(default=86400, gt=0)
    """How long RQ keeps a finished job (the manifest in the store is kept regardless)."""
    failure_ttl_s: int = Field(default=7 * 86400, gt=0)
    """How long RQ keeps a failed job."""
    job_monitoring_interval_s: int = Field(default=10, gt=0)
    """Worker heartbeat period while a job runs."""
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    """Period of the API's reconciler of manifests against RQ."""
    requeue_grace_s: float = Field(default=30.0, ge=0)
    """The reconciler leaves a job alone this long after it was (re-)enqueued."""
    no_worker_wait_s: float = Field(default=300.0, ge=0)
    """A queued job whose queue has had no live worker for this long (and that has waited this
    long) is failed by the reconciler with ``no_worker``."""
    debug_stage_delay_s: float = Field(default=0.0, ge=0, le=60)
    """Testing and demos only: sleep this long after each engine stage."""
    cap_epochs: int = Field(default=100, ge=1)
    """Largest ``method.epochs`` a job may ask for (422 past it)."""
    cap_refit_steps: int = Field(default=1000, ge=1)
    """Largest ``method.refit_max_steps``."""
    cap_attack_steps: int = Field(default=100, ge=1)
    """Largest ``steps`` of ``objective.attack`` and ``evaluation.attack``."""
    cap_lissa_depth: int = Field(default=10_000, ge=1)
    """Largest ``influence.lissa_depth``."""
    cap_cg_iterations: int = Field(default=5000, ge=1)
    """Largest ``influence.cg_max_iterations``."""
    cap_memory_gb: float = Field(default=8.0, gt=0)
    """Largest ``influence.max_memory_gb``: a job may lower the worker's memory guard, never raise it."""
    cap_n_boot: int = Field(default=10_000, ge=100)
    """Largest ``evaluation.n_boot``."""
    cap_max_iterations: int = Field(default=20, ge=1)
    """Largest ``method.max_iterations`` (each iteration is a full influence solve and step)."""
    cap_lissa_batch_size: int = Field(default=8192, ge=1)
    """Largest ``influence.lissa_batch_size`` (per-sample gradients held at once)."""

    # --- request limits (app/limits.py) ---
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    """A request body that sends nothing for this long is refused (408) and its upload discarded."""
    body_timeout_s: float = Field(default=900.0, gt=0)
    """A request body still arriving after this long is refused (408): at least cap/this bytes a second."""
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this long (uvicorn ``timeout_keep_alive``)."""
    max_connections: int = Field(default=1000, ge=1)
    """Open connections of one API process; uvicorn answers 503 past it (``limit_concurrency``)."""
    max_concurrent_requests: int = Field(default=200, ge=1)
    """Requests one API process handles at once; 503 + Retry-After past it."""
    max_concurrent_uploads: int = Field(default=8, ge=1)
    """Uploads one API process receives at once; 503 + Retry-After past it."""
    min_free_disk_bytes: int = Field(default=256 * MiB, ge=0)
    """Free space the store must keep: readiness fails and writes answer 507 below it."""
    # --- per-tenant quotas and rate limits (app/quotas.py); 0 turns one off ---
    rate_requests_per_s: int = Field(default=50, ge=0)
    """Requests per second of one tenant; 429 + Retry-After past it."""
    rate_uploads_per_min: int = Field(default=60, ge=0)
    """Uploads per minute of one tenant."""
    rate_failed_auth_per_min: int = Field(default=20, ge=0)
    """Requests with a missing or wrong API key per minute from one client address; 429 past it."""
    quota_jobs_in_flight: int = Field(default=20, ge=0)
    """Queued plus running jobs of one tenant."""
    quota_stored_bytes: int = Field(default=100 * 1024 * MiB, ge=0)
    """Bytes one tenant may keep in the store (uploads and job outputs)."""

    @field_validator("store", mode="before")
    @classmethod
    def _store_location(cls, value: object) -> object:
        """An ``s3://`` URL stays a string (checked here, so a typo fails at start-up); anything
        else is a directory path."""
        if isinstance(value, str) and value.startswith("s3://"):
            from models_store.s3.location import parse_s3_url

            parse_s3_url(value)
            return value
        return Path(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _apply_redis_password(self) -> ServiceSettings:
        if self.redis_password is not None:
            self.redis_url = url_with_password(self.redis_url, self.redis_password.get_secret_value())
        return self

    # --- Redis outages (workers/resilience.py, workers/lease.py) ---
    worker_redis_retry_min_s: float = Field(default=0.5, gt=0, le=60)
    """First wait of a worker retrying an unreachable Redis (doubling, with jitter)."""
    worker_redis_retry_max_s: float = Field(default=30.0, gt=0, le=600)
    """Longest wait between a worker's Redis retries."""
    job_lease_s: float = Field(default=10.0, gt=0, le=600)
    """A running job's lease in its manifest: another execution of it waits while it is renewed."""
    # --- logs (workers/logs.py) ---
    log_format: Literal["json", "text"] = "json"
    """Log lines of ``serve`` and ``worker``: JSON objects, or human text (``--log-format`` overrides)."""

    # --- MLflow hand-off (workers/handoff/, docs/SERVICE.md "MLflow") ---
    mlflow_tenants: dict[str, MlflowConfig] = Field(default_factory=dict)
    """JSON ``{tenant: {tracking_uri, experiment, registered_model}}``: that tenant's jobs hand off
    there (a job's ``mlflow`` field overrides parts); its tracking URI is allowed for its jobs."""
    mlflow_allowed_tracking_uris: str = ""
    """Comma-separated tracking URIs (exact strings) a job's ``mlflow.tracking_uri`` may name."""
    mlflow_timeout_s: int = Field(default=10, ge=1, le=600)
    """Timeout of each request to MLflow (its client's ``MLFLOW_HTTP_REQUEST_TIMEOUT``)."""
    mlflow_max_retries: int = Field(default=2, ge=0, le=10)
    """Retries of a failed request to MLflow (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), after 0, 2, 4 ... s."""
    mlflow_deadline_s: float = Field(default=120.0, gt=0, le=3600)
    """A hand-off still unfinished after this long stops at its next request and is recorded as failed."""

    @property
    def mlflow_allowed_tracking_uris_list(self) -> list[str]:
        """:attr:`mlflow_allowed_tracking_uris` as a list."""
        return [uri.strip() for uri in self.mlflow_allowed_tracking_uris.split(",") if uri.strip()]

    # --- signed webhooks (workers/notify/) ---
    webhook_secrets: SecretStr | None = None
    """Comma-separated ``tenant:whsec_...`` pairs; a tenant may be listed more than once (rotation:
    every listed secret signs, the first is the one ``GET /v1/webhooks/secret`` returns)."""
    webhook_master_secret: SecretStr | None = None
    """Derives a secret for every tenant (HMAC-SHA256 of the tenant name), after any listed ones."""
    webhook_allow_http: bool = False
    """Allow ``http://`` notify URLs (default: ``https://`` only)."""
    webhook_allow_private: bool = False
    """Allow loopback, private (RFC 1918, unique-local) and shared addresses; link-local (cloud
    metadata), multicast, reserved and unspecified addresses stay refused."""
    webhook_allowed_hosts: str = ""
    """Comma-separated hosts a notify URL may name: exact names or ``*.suffix``; empty: any host."""
    webhook_ca_bundle: Path | None = None
    """PEM file of the CAs that https receivers' certificates must chain to (default: certifi's)."""
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Connect, write and read timeout of one delivery attempt."""
    webhook_retry_for_s: float = Field(default=86400.0, ge=0)
    """Retries of an undelivered event stop once this long has passed since its first attempt."""
    webhook_retry_min_s: float = Field(default=5.0, gt=0)
    """Wait before the first retry (doubling per retry, with jitter)."""
    webhook_retry_max_s: float = Field(default=3600.0, gt=0)
    """Longest wait between two retries."""

    @field_validator("webhook_secrets", "webhook_master_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        from workers.notify.keys import check_master_secret, parse_secrets

        if value is not None and not value.get_secret_value():
            return None  # set but empty (compose's ${VAR:-}) means unset
        if value is not None:
            check = parse_secrets if info.field_name == "webhook_secrets" else check_master_secret
            check(value.get_secret_value())
        return value

    def spec_caps(self) -> dict[str, float]:
        """Each capped spec field (dotted path) with the operator's cap."""
        return {"method.epochs": self.cap_epochs, "method.refit_max_steps": self.cap_refit_steps,
                "objective.attack.steps": self.cap_attack_steps,
                "evaluation.attack.steps": self.cap_attack_steps,
                "influence.lissa_depth": self.cap_lissa_depth,
                "influence.cg_max_iterations": self.cap_cg_iterations,
                "influence.max_memory_gb": self.cap_memory_gb, "evaluation.n_boot": self.cap_n_boot,
                "method.max_iterations": self.cap_max_iterations,
                "influence.lissa_batch_size": self.cap_lissa_batch_size}

    def queue_name(self, name: str) -> str:
        """The RQ queue name of ``cpu`` or ``gpu``."""
        return f"{self.queue_prefix}:{name}"

    @property
    def max_attempts(self) -> int:
        """Executions a job may start: the first one plus the retries."""
        return 1 + self.job_retries


def url_with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in it, percent-encoded (a username in ``url`` is kept).

    Raises:
        ValueError: ``url`` already carries a different password.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        if unquote(parts.password) == password:
            return url
        raise ValueError("REDIS_URL already carries a password and SOFTUNLEARN_REDIS_PASSWORD sets "
                         "another one; set the password in one of them only")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The settings of this process, read once from the environment."""
    return ServiceSettings()
