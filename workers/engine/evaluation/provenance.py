"""Where a report came from: ids, time, software, device, and the hashes of every input.

A reader of a report (or an auditor holding only the files) can recompute each sha256 from the
uploaded files and check that this report belongs to them; the corrected checkpoint records the
same ``report_id`` and its parent's sha256 in its metadata.
"""

from __future__ import annotations

import importlib.metadata
import platform
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from workers.engine.config import CorrectionSpec
from workers.engine.io.inputs import CorrectionInputs

__all__ = ["new_report_id", "provenance", "tool_version"]


def tool_version() -> str | None:
    """The installed ``softunlearn`` package version (None when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("softunlearn")
    except importlib.metadata.PackageNotFoundError:
        return None


def new_report_id() -> str:
    """A fresh random report id (32 hex digits)."""
    return uuid.uuid4().hex


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def provenance(inputs: CorrectionInputs, spec: CorrectionSpec, device: str, report_id: str,
               run_id: str | None = None, job_id: str | None = None) -> dict[str, Any]:
    """``report["provenance"]``: ids, UTC time, versions, device, input hashes, spec and seeds.

    ``run_id`` defaults to ``job_id`` (service jobs) or to ``cli-<report_id>`` (in-process runs).
    ``corrected_model_sha256`` is filled in when the checkpoint is written.
    """
    return {
        "report_id": report_id,
        "run_id": run_id or job_id or f"cli-{report_id}",
        "job_id": job_id,
        "version": tool_version(),
        "created_at": _utc_now(),
        "device": device,
        "model_sha256": inputs.model_sha256,
        "datasets": dict(inputs.dataset_sha256),
        "corrected_model_sha256": None,
        "spec": spec.to_dict(),
        "seeds": {"job": spec.seed, "bootstrap": spec.seed},
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "platform": platform.platform()},
    }
