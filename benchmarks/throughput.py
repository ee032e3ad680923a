"""Throughput per machine: jobs/min and CPU-seconds per job of real workers on one host.

A real ``softunlearn serve`` and real ``softunlearn worker`` processes on a private store and
queue prefix (the Redis at ``REDIS_URL``, or a private ``redis-server``). For each
configuration (1 or 2 workers; threads per work horse the default or unlimited) it submits
:data:`JOBS` default Adult corrections over HTTP while no worker runs, then starts the workers
and waits until every job has ended. Measured:

* **jobs/min**: jobs ÷ the wall time from starting the workers to the last job's end (the
  workers' start and their one engine import included, as an operator sees it);
* **busy jobs/min**: jobs ÷ the time from the first job's start to the last one's end (manifests);
* **CPU-s per job**: user + system CPU of the workers and their work horses (``RUSAGE_CHILDREN``
  once they are reaped) ÷ jobs: the API, which runs in its own process, is not counted;
* the threads each job recorded (its ``threads``), and the load average before and after.

Run it as ``python -m benchmarks.run --tables throughput``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.client import SoftUnlearnClient
from workers.demo import ensure_redis, stop_process
from workers.settings import DEFAULT_REDIS_URL
from workers.threads import THREAD_ENV_VARS, available_cpus

__all__ = ["CONFIGS", "JOBS", "Config", "Outcome", "markdown_throughput", "run_throughput"]

JOBS = 20
"""Jobs per configuration (the issue's measurement: 20 Adult default jobs)."""
POLL_S = 0.5
Say = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """``workers`` worker processes; ``threads`` per work horse: None the default
    (``SOFTUNLEARN_WORKERS_PER_HOST=workers``), 0 unlimited (the libraries' one per core), else N."""

    workers: int
    threads: int | None

    @property
    def label(self) -> str:
        """The configuration as the table shows it."""
        threads = {None: "default", 0: "unlimited"}.get(self.threads, str(self.threads))
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, threads {threads}"


CONFIGS = (Config(1, None), Config(2, None), Config(1, 0), Config(2, 0))


@dataclass
class Outcome:
    """What one configuration measured."""

    config: Config
    jobs: int
    succeeded: int
    wall_s: float
    busy_s: float
    cpu_s: float
    threads: list[int | None] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    @property
    def jobs_per_min(self) -> float:
        """Jobs per minute, workers' start included."""
        return 60.0 * self.jobs / self.wall_s

    @property
    def busy_jobs_per_min(self) -> float:
        """Jobs per minute from the first job's start to the last one's end."""
        return 60.0 * self.jobs / self.busy_s if self.busy_s > 0 else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _worker_env(base: dict[str, str], config: Config) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in THREAD_ENV_VARS}  # unlimited must be unlimited
    env |= {"SOFTUNLEARN_DEVICE": "cpu", "SOFTUNLEARN_WORKERS_PER_HOST": str(config.workers)}
    if config.threads is not None:
        env["SOFTUNLEARN_WORKER_THREADS"] = str(config.threads)
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
    handle = stack.enter_context(open(log, "wb"))  # noqa: SIM115 (closed by the stack)
    return subprocess.Popen([sys.executable, "-m", "workers.cli.main", *args], env=env,
                            stdout=handle, stderr=subprocess.STDOUT)


def _job_body(ids: dict[str, str]) -> dict[str, Any]:
    """A default Adult correction: only what a job must name."""
    return {**ids, "objective": {"metric": "demographic_parity", "sensitive_attribute": "sex"}}


def _wait_all(client: SoftUnlearnClient, job_ids: Sequence[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    pending = list(job_ids)
    done: dict[str, dict[str, Any]] = {}
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} of {len(job_ids)} jobs still unfinished after "
                               f"{timeout_s:.0f} s")
        for job_id in list(pending):
            job = client.get_job(job_id)
            if job["status"] in ("succeeded", "failed", "canceled"):
                done[job_id] = job
                pending.remove(job_id)
        if pending:
            time.sleep(POLL_S)
    return [done[job_id] for job_id in job_ids]


def _busy_seconds(jobs: Sequence[dict[str, Any]]) -> float:
    starts = [datetime.fromisoformat(j["started_at"]) for j in jobs if j.get("started_at")]
    ends = [datetime.fromisoformat(j["finished_at"]) for j in jobs if j.get("finished_at")]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _measure(client: SoftUnlearnClient, env: dict[str, str], ids: dict[str, str], config: Config,
             jobs: int, work: Path) -> Outcome:
    """Queue ``jobs`` jobs, run ``config``'s workers until all have ended, stop them."""
    job_ids = [client.create_job(_job_body(ids), idempotency_key=secrets.token_hex(8))["id"]
               for _ in range(jobs)]
    load_before, cpu_before = list(os.getloadavg()), _children_cpu()
    started = time.perf_counter()
    with ExitStack() as stack:
        workers = [_spawn(["worker"], _worker_env(env, config), work / f"worker-{config.workers}-"
                          f"{config.threads}-{i}.log", stack) for i in range(config.workers)]
        try:
            ended = _wait_all(client, job_ids, timeout_s=120.0 * jobs)
            wall = time.perf_counter() - started
        finally:
            for worker in workers:
                stop_process(worker, timeout=60)
    return Outcome(config, jobs, sum(j["status"] == "succeeded" for j in ended), wall, _busy_seconds(ended),
                   _children_cpu() - cpu_before, sorted({j.get("threads") for j in ended}, key=str),
                   load_before, list(os.getloadavg()))


@contextlib.contextmanager
def _service(work: Path, stack: ExitStack) -> Iterator[tuple[SoftUnlearnClient, dict[str, str]]]:
    """The API on a private store and queue prefix; its client and the environment it runs with."""
    with contextlib.redirect_stdout(sys.stderr):
        redis_url = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), work, stack)
    key = secrets.token_urlsafe(24)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SOFTUNLEARN_")},
           "REDIS_URL": redis_url, "SOFTUNLEARN_STORE": str(work / "store"),
           "SOFTUNLEARN_API_KEYS": f"bench:{key}",
           "SOFTUNLEARN_QUEUE_PREFIX": f"bench-{secrets.token_hex(4)}",
           "SOFTUNLEARN_QUOTA_JOBS_IN_FLIGHT": "0", "SOFTUNLEARN_RATE_REQUESTS_PER_S": "0",
           "SOFTUNLEARN_RATE_UPLOADS_PER_MIN": "0"}
    port = _free_port()
    api = _spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, work / "api.log", stack)
    stack.callback(stop_process, api)
    client = stack.enter_context(SoftUnlearnClient(f"http://127.0.0.1:{port}", key))
    client.wait_ready(timeout=120)
    yield client, env


def _upload_adult(client: SoftUnlearnClient, work: Path, seed: int) -> dict[str, str]:
    from workers.engine.examples.builder import build_example

    example = build_example("adult", work / "adult", seed=seed)
    d = example.out_dir
    schema = json.loads((d / "schema.json").read_text())
    arch = json.loads((d / "arch.json").read_text())
    ids = {"model_id": client.upload_model(d / "model.safetensors", arch)["id"]}
    for split in ("train", "audit", "eval"):
        ids[f"{split}_dataset_id"] = client.upload_dataset(d / f"{split}.parquet", schema)["id"]
    return ids


def run_throughput(work: Path | None = None, jobs: int = JOBS, configs: Sequence[Config] = CONFIGS,
                   seed: int = 0, say: Say = lambda _m: None) -> dict[str, Any]:
    """Measure every configuration; returns the machine, the outcomes and the markdown table."""
    with ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softunlearn-throughput-")))
        work.mkdir(parents=True, exist_ok=True)
        client, env = stack.enter_context(_service(work, stack))
        ids = _upload_adult(client, work, seed)
        machine = {"cpus": available_cpus(), "cpu_count": os.cpu_count(),
                   "load_at_start": list(os.getloadavg())}
        outcomes = []
        for config in configs:
            say(f"[throughput] {config.label}: {jobs} Adult default jobs")
            outcomes.append(_measure(client, env, ids, config, jobs, work))
            last = outcomes[-1]
            say(f"[throughput] {config.label}: {last.jobs_per_min:.1f} jobs/min, "
                f"{last.cpu_s / jobs:.2f} CPU-s per job, threads {last.threads}")
        machine["load_at_end"] = list(os.getloadavg())
    return {"machine": machine, "jobs": jobs,
            "outcomes": [asdict(o) | {"label": o.config.label, "jobs_per_min": o.jobs_per_min,
                                      "busy_jobs_per_min": o.busy_jobs_per_min} for o in outcomes],
            "markdown": markdown_throughput(outcomes, machine)}


def _loads(values: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def markdown_throughput(outcomes: Sequence[Outcome], machine: dict[str, Any]) -> str:
    """The throughput table, the machine and its load under it."""
    lines = ["| configuration | threads per job | jobs ok | jobs/min | busy jobs/min | CPU-s per job "
             "| wall s | load before → after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        threads = ", ".join(str(t) for t in o.threads)
        lines.append(f"| {o.config.label} | {threads} | {o.succeeded}/{o.jobs} | {o.jobs_per_min:.1f} "
                     f"| {o.busy_jobs_per_min:.1f} | {o.cpu_s / o.jobs:.2f} | {o.wall_s:.0f} "
                     f"| {_loads(o.load_before)} → {_loads(o.load_after)} |")
    lines.append("")
    lines.append(f"{machine['cpus']} usable CPUs (os.cpu_count {machine['cpu_count']}); load average "
                 f"(1/5/15 min) {_loads(machine['load_at_start'])} at start, "
                 f"{_loads(machine['load_at_end'])} at end; jobs/min includes the workers' start and "
                 "their one engine import.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = run_throughput(say=lambda m: print(m, file=sys.stderr, flush=True))
    print(result["markdown"])
