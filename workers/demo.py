"""``softunlearn demo``: the whole service on one machine, end to end over HTTP.

Uses the Redis at ``REDIS_URL`` (or starts a private ``redis-server`` when none answers), starts
the API and a worker as subprocesses on a private store and queue prefix, builds the Adult
example, uploads it with :class:`app.client.SoftUnlearnClient`, submits a demographic-parity
correction, shows progress, downloads the corrected checkpoint and prints a before/after table.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from app.client import SoftUnlearnClient
from workers.settings import DEFAULT_REDIS_URL

__all__ = ["run_demo", "stop_process"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (RedisError, ValueError, OSError):
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate ``process`` and wait; kill it if it does not exit within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ensure_redis(url: str, workdir: Path, stack: ExitStack) -> str:
    """``url`` when a Redis answers there, else the URL of a ``redis-server`` started for the demo.

    Raises:
        RuntimeError: none answers and ``redis-server`` is not installed or does not come up.
    """
    if _answers(url):
        print(f"Redis: using {url}")
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"no Redis answers at {url} and redis-server is not installed; install it "
                           "(apt-get install redis-server) or set REDIS_URL")
    port = _free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(stop_process, process)
    local = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if _answers(local):
            print(f"Redis: none answered at {url}; started redis-server on 127.0.0.1:{port} for this demo")
            return local
        time.sleep(0.1)
    raise RuntimeError("the redis-server started for the demo did not answer")


def _spawn(args: list[str], env: dict[str, str], log: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
    handle = stack.enter_context(open(log, "wb"))  # noqa: SIM115 (closed by the stack)
    process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", *args], env=env,
                               stdout=handle, stderr=subprocess.STDOUT)
    stack.callback(stop_process, process)
    return process


def _wait_ready(client: SoftUnlearnClient, api: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while api.poll() is None and time.monotonic() < deadline:
        if client.ready():
            return True
        time.sleep(0.2)
    return False


class _ProgressLine:
    """A live progress bar on a terminal; one line per stage change otherwise."""

    def __init__(self) -> None:
        self.tty, self.last = sys.stdout.isatty(), ""

    def __call__(self, job: dict[str, Any]) -> None:
        width, stage = 30, job.get("stage") or "waiting for a worker"
        done = round(job["progress"] * width)
        line = (f"  [{'#' * done}{'.' * (width - done)}] {job['progress'] * 100:5.1f}%  "
                f"{job['status']:<9} {stage:<22}")
        if self.tty:
            print(f"\r{line}", end="", flush=True)
        elif stage != self.last:
            print(line.rstrip(), flush=True)
        self.last = stage


def _check_checkpoint(original: Path, corrected: Path) -> str:
    from safetensors import safe_open

    def shapes(path: Path) -> dict[str, tuple[list[int], str]]:
        with safe_open(str(path), framework="numpy") as handle:
            return {k: (list(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype())
                    for k in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)

    same = shapes(original) == shapes(corrected)
    return "same keys, shapes and dtypes as the input" if same else "DIFFERENT keys/shapes than the input!"


def _run(client: SoftUnlearnClient, example: Path, out: Path) -> int:
    import json

    arch = json.loads((example / "arch.json").read_text())
    schema = json.loads((example / "schema.json").read_text())
    model = client.upload_model(example / "model.safetensors", arch)
    print(f"uploaded model {model['id']} (sha256 {model['sha256'][:12]}...)")
    ids = {}
    for split in ("train", "audit", "eval"):
        ids[split] = client.upload_dataset(example / f"{split}.parquet", schema)["id"]
        print(f"uploaded {split} dataset {ids[split]}")
    job = client.create_job({
        "model_id": model["id"], "train_dataset_id": ids["train"], "audit_dataset_id": ids["audit"],
        "eval_dataset_id": ids["eval"],
        "objective": {"metric": "demographic_parity", "sensitive_attribute": schema["sensitive"][0],
                      "utility_tolerance": 0.0},
        "weighting": {"scheme": "soft-2.3"}, "method": {"name": "newton"},
    }, idempotency_key=f"demo-{secrets.token_hex(8)}")
    print(f"submitted job {job['id']}")
    started = time.monotonic()
    job = client.wait(job["id"], interval=0.3, on_update=_ProgressLine(), raise_on_failure=False)
    print(f"\njob {job['status']} in {time.monotonic() - started:.1f} s on {job.get('device')}")
    if job["status"] != "succeeded":
        print(f"error: {job.get('error')}")
        return 1
    corrected = client.download_model(job["id"], out / "corrected.safetensors")
    (out / "report.json").write_text(json.dumps(client.get_report(job["id"]), indent=2))
    (out / "report.html").write_text(client.get_report_html(job["id"]))
    weights = client.download_weights(job["id"], out / "weights.parquet")
    check = _check_checkpoint(example / "model.safetensors", corrected)
    print(f"corrected checkpoint: {corrected} ({check})")
    print(f"report: {out / 'report.json'}, {out / 'report.html'}; per-sample weights: {weights}\n")
    from workers.engine.evaluation.report import format_summary

    print(format_summary(json.loads((out / "report.json").read_text())))
    return 0


def run_demo(out: Path | None = None, seed: int = 0) -> int:
    """Run the demo; returns the exit code."""
    from workers.engine.examples.builder import build_example

    workdir = Path(tempfile.mkdtemp(prefix="softunlearn-demo-"))
    out = out or workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        try:
            redis_url = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), workdir, stack)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        inherited = {k: v for k, v in os.environ.items() if k != "SOFTUNLEARN_API_KEYS_FILE"}
        env = {**inherited, "REDIS_URL": redis_url, "SOFTUNLEARN_STORE": str(workdir / "store"),
               "SOFTUNLEARN_API_KEYS": f"demo:{key}",
               "SOFTUNLEARN_QUEUE_PREFIX": f"softunlearn-demo-{secrets.token_hex(4)}"}
        port = _free_port()
        api = _spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, workdir / "api.log", stack)
        _spawn(["worker"], env, workdir / "worker.log", stack)
        print(f"API on http://127.0.0.1:{port} and one worker (logs in {workdir}); building the Adult "
              "example...")
        build_example("adult", workdir / "adult", seed=seed)
        with SoftUnlearnClient(f"http://127.0.0.1:{port}", key) as client:
            if not _wait_ready(client, api):
                print(f"error: the API did not start; see {workdir / 'api.log'}", file=sys.stderr)
                return 1
            code = _run(client, workdir / "adult", out)
    print(f"\nresults kept in {out}")
    return code
