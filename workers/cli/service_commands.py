"""Service subcommands: ``serve`` (the API), ``worker`` (an RQ worker), ``worker-health`` (its
healthcheck) and ``demo``.

Imports are lazy: ``softunlearn serve`` never imports torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.settings import ServiceSettings

__all__ = ["register"]


def _settings(args: argparse.Namespace) -> ServiceSettings:
    """The settings of this process, with ``--log-format`` over ``SOFTUNLEARN_LOG_FORMAT``."""
    from workers.settings import get_settings

    settings = get_settings()
    if args.log_format is not None:
        settings.log_format = args.log_format
    return settings


def run_serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn; every log line (uvicorn's too) in the chosen format, uvicorn's
    access log replaced by the app's (app/access_log.py)."""
    import uvicorn

    from workers import logs

    settings = _settings(args)
    logs.configure(settings.log_format, args.log_level)
    uvicorn.run("app.main:app_factory", factory=True, host=args.host, port=args.port,
                log_level=args.log_level, log_config=None, access_log=False, proxy_headers=True,
                server_header=False, timeout_keep_alive=settings.keep_alive_timeout_s,
                limit_concurrency=settings.max_connections)
    return 0


def run_worker_command(args: argparse.Namespace) -> int:
    """Run an RQ worker on the service's queues (``--threads``/``--workers-per-host`` over
    ``SOFTUNLEARN_WORKER_THREADS``/``SOFTUNLEARN_WORKERS_PER_HOST``)."""
    from workers.worker import run_worker

    settings = _settings(args)
    if args.threads is not None:
        settings.worker_threads = args.threads
    if args.workers_per_host is not None:
        settings.workers_per_host = args.workers_per_host
    try:
        return run_worker(settings, queues=args.queues, burst=args.burst, name=args.name)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2


def run_worker_health_command(args: argparse.Namespace) -> int:
    """Print one line on the RQ worker of this host; 0 healthy, 1 unhealthy, 2 bad arguments."""
    from pydantic import ValidationError

    from workers.healthcheck import worker_health
    from workers.settings import get_settings

    try:
        result = worker_health(get_settings(), queues=args.queues)
    except ValidationError as exc:  # the settings' messages only: the input may hold a password
        print("error: " + "; ".join(error["msg"] for error in exc.errors(include_input=False)))
        return 2
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(result.line(), flush=True)
    return result.exit_code


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the end-to-end demo."""
    from workers.demo import run_demo

    return run_demo(out=args.out, seed=args.seed)


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("json", "text"), default=None,
                        help="log lines as JSON objects or human text (default: SOFTUNLEARN_LOG_FORMAT, "
                        "else json)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the service subcommands to ``sub``."""
    serve = sub.add_parser("serve", help="run the HTTP API (environment: REDIS_URL, SOFTUNLEARN_STORE, "
                           "SOFTUNLEARN_API_KEYS; see docs/SERVICE.md)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug"))
    _log_format_option(serve)
    serve.set_defaults(handler=run_serve)

    worker = sub.add_parser("worker", help="run a correction worker (same environment as serve)")
    worker.add_argument("--queues", default=None,
                        help="comma-separated subset of gpu,cpu (default: gpu,cpu with CUDA, else cpu)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument("--name", default=None, help="worker name (default: generated)")
    worker.add_argument("--threads", type=_count(0), default=None,
                        help="threads (torch, BLAS, OpenMP) of each job; 0: one per core in every job "
                        "(default: SOFTUNLEARN_WORKER_THREADS, else the CPUs this worker may use divided "
                        "by --workers-per-host)")
    worker.add_argument("--workers-per-host", type=_count(1), default=None,
                        help="workers sharing this host's CPUs, for the default --threads (default: "
                        "SOFTUNLEARN_WORKERS_PER_HOST, else 1)")
    _log_format_option(worker)
    worker.set_defaults(handler=run_worker_command)

    health = sub.add_parser(
        "worker-health", help="healthcheck of a worker: exit 0 when an RQ worker of this host is "
        "registered in Redis, alive, heartbeating and on the expected queues (also while Redis is "
        "unreachable: reported as degraded), else 1; one line says why")
    health.add_argument("--queues", default=None,
                        help="the queues the worker must listen on, comma-separated subset of gpu,cpu "
                        "(default: SOFTUNLEARN_WORKER_QUEUES, else any of this service's queues)")
    health.set_defaults(handler=run_worker_health_command)

    demo = sub.add_parser("demo", help="everything on one machine: API, worker, Redis; correct the Adult "
                          "example over HTTP and print the before/after table")
    demo.add_argument("--out", type=Path, default=None, help="where to keep the results")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo_command)
