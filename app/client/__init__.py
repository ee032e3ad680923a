"""The Python client of the v1 API: light dependencies only (httpx, tenacity; no torch), so
``pip install softunlearn`` is enough to use it.

    client = SoftUnlearnClient("http://127.0.0.1:8000", api_key)
    model = client.upload_model("model.safetensors", {"type": "mlp", "in_features": 103, ...}, reuse=True)
    job = client.create_job({"model_id": model["id"], ..., "objective": {...}}, idempotency_key=key)
    job = client.wait(job["id"], on_update=print)        # JobFailed / JobCanceled if it did not succeed
    client.download_model(job["id"], "corrected.safetensors")

Every call retries connection errors, 429 and 502/503/504 with backoff (honouring
``Retry-After``) and never another 4xx; an error answer raises :class:`ApiProblem`.
"""

from app.client.core import TERMINAL, SoftUnlearnClient
from app.client.errors import ApiProblem, JobCanceled, JobEnded, JobFailed
from app.client.files import file_sha256, submission_key
from app.client.retry import RetryPolicy

__all__ = ["TERMINAL", "ApiProblem", "JobCanceled", "JobEnded", "JobFailed", "RetryPolicy",
           "SoftUnlearnClient", "file_sha256", "submission_key"]
