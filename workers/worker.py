"""``softunlearn worker``: an RQ worker on the service's queues, device chosen at start.

The device is probed in a subprocess so the worker process never initializes CUDA itself (a
CUDA context does not survive ``fork``); each forked work horse initializes it on its own. A
host with no GPU device node skips the probe. The worker listens without importing the engine
(well under a second of CPU); it imports it once, before forking its first horse, so that every
horse starts warm (importing torch and the engine in each horse would cost each job seconds of
CPU). The threads of each horse are fixed before that import (workers/threads.py). A Redis outage
does not stop it (workers/resilience.py): running jobs go on, and it takes jobs again when Redis
is back.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
from typing import Any

from redis import Redis
from rq.serializers import JSONSerializer

from models_store import open_store
from models_store.records import Records
from workers import jobs, lease, logs, threads
from workers.queue import SOCKET_TIMEOUT_S, WORKER_TTL_S, get_queue, parse_queue_kinds
from workers.resilience import Backoff, OutageLog, ResilientWorker, supervise
from workers.settings import ServiceSettings

__all__ = ["detect_device", "resolve_queues", "run_worker"]

log = logging.getLogger(__name__)
_PROBE = "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"
_GPU_NODES = ("/dev/nvidia*", "/dev/dxg", "/dev/kfd", "/proc/driver/nvidia")
"""Device nodes of the NVIDIA, WSL and ROCm drivers: without one, torch sees no CUDA device."""


def _gpu_node_present() -> bool:
    return any(glob.glob(pattern) for pattern in _GPU_NODES)


def detect_device(setting: str) -> str:
    """``cpu`` or ``cuda``: the setting when explicit, else what a fresh process sees (``cpu``
    at once on a host without a GPU device node)."""
    if setting != "auto":
        return setting
    if not _gpu_node_present():
        return "cpu"
    env = {**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                               timeout=120, env=env, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("device probe failed (%s); using the CPU", exc)
        return "cpu"
    return "cuda" if probe.stdout.strip().endswith("cuda") else "cpu"


def resolve_queues(requested: str | None, device: str) -> list[str]:
    """Queue kinds to listen on, highest priority first.

    Raises:
        ValueError: an unknown queue kind.
    """
    if not requested:
        return ["gpu", "cpu"] if device == "cuda" else ["cpu"]
    return parse_queue_kinds(requested)


def _preload_engine() -> None:
    """Import the engine in the worker (once; later calls find it imported) so horses fork warm."""
    import workers.engine.pipeline  # noqa: F401


def _releaser(settings: ServiceSettings) -> Any:
    """The worker's hook after a horse exits: release the lease its execution held."""
    records = Records(open_store(settings.store, endpoint_url=settings.s3_endpoint_url))

    def release(job: Any, horse_pid: int) -> None:
        tenant, job_id = job.args[0], job.args[1]
        lease.release(records, str(tenant), str(job_id), horse_pid)

    return release


def run_worker(settings: ServiceSettings, queues: str | None = None, burst: bool = False,
               name: str | None = None) -> int:
    """Run the worker loop until stopped; returns the exit code.

    Redis outages are waited out (backoff up to ``worker_redis_retry_max_s``); SIGTERM stops it.
    """
    logs.configure(settings.log_format)
    device = detect_device(settings.device)
    jobs.set_device(device)
    kinds = resolve_queues(queues or settings.worker_queues, device)
    horse_threads = threads.resolve_threads(settings.worker_threads, settings.workers_per_host)
    threads.export_thread_env(horse_threads)  # before torch/numpy load in this process or a horse
    jobs.set_threads(horse_threads)
    connection = Redis.from_url(settings.redis_url, socket_connect_timeout=SOCKET_TIMEOUT_S)
    outage = OutageLog(Backoff(settings.worker_redis_retry_min_s, settings.worker_redis_retry_max_s))
    release = _releaser(settings)

    def make_worker(worker_name: str | None = None) -> ResilientWorker:
        return ResilientWorker(
            [get_queue(connection, settings, kind) for kind in kinds],
            connection=connection,
            name=worker_name,
            serializer=JSONSerializer,
            job_monitoring_interval=settings.job_monitoring_interval_s,
            worker_ttl=WORKER_TTL_S,
            outage=outage,
            on_horse_reaped=release,
            before_fork=_preload_engine,
        )

    first = make_worker(name)
    logs.event(log, logging.INFO, "worker_started",
               "softunlearn worker %s: device=%s, threads per job=%s, queues=%s", first.name, device,
               horse_threads or "unlimited", ", ".join(settings.queue_name(k) for k in kinds),
               device=device, threads=horse_threads, worker=first.name, queue=",".join(kinds))
    return supervise(first, make_worker, connection, outage,
                     lambda worker: worker.work(burst=burst, logging_level="INFO"))
