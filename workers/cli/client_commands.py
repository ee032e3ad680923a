"""Client subcommands for a running service: ``submit``, ``status``, ``download``, ``cancel``.

They need only the thin client (``pip install softunlearn``: httpx, pydantic, tenacity; no torch).
Every request retries connection errors, 429 and 502/503/504 (honouring ``Retry-After``) and
never another 4xx; a 4xx is exit 2 with the service's message. The client (httpx, pydantic,
rich) is imported when a command runs, not for ``--help`` or an argument error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from workers.cli.arguments import add_column_arguments, add_input_files
from workers.cli.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_JOB_ENDED,
    EXIT_NOT_FINISHED,
    EXIT_OK,
    EXIT_TARGET_MISSED,
)
from workers.cli.gates import gate_argument

if TYPE_CHECKING:
    from app.client import SoftUnlearnClient
    from workers.cli.progress_output import Output

__all__ = ["register"]

URL_ENV = "SOFTUNLEARN_URL"
KEY_ENV = "SOFTUNLEARN_API_KEY"

EPILOG = f"""\
environment:
  {URL_ENV}       the service's base URL when --url is not given
  {KEY_ENV}   the API key, or name another variable with --api-key-env (never on the command line)

output:
  one JSON object per line on stdout when stdout is not a terminal (or with --json): events
  uploaded, submitted, progress, downloaded, gate, retry, then result or error (with exit_code);
  a progress bar on stderr otherwise.

exit codes:
  {EXIT_OK}  succeeded: target met and every gate passed (submit without --wait: submitted)
  {EXIT_INTERNAL}  internal error, or the service stayed unreachable through every retry
  {EXIT_BAD_INPUT}  bad input: a missing file, malformed JSON or gate, or a 4xx from the service
  {EXIT_TARGET_MISSED}  succeeded (outputs fetched) but the target was missed or a gate failed
  {EXIT_JOB_ENDED}  the job failed or was canceled (its error code and message are printed)
  {EXIT_NOT_FINISHED}  the job was still queued or running (--timeout ran out, or download too early)
"""


def _client(args: argparse.Namespace, output: Output) -> SoftUnlearnClient:
    from app.client import RetryPolicy, SoftUnlearnClient
    from workers.cli.submission import InputProblem

    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise InputProblem(f"name the service with --url or {URL_ENV}")
    key = os.environ.get(args.api_key_env)
    if not key:
        raise InputProblem(f"the environment variable {args.api_key_env} holds no API key "
                           "(set it, or name another one with --api-key-env)")

    def on_retry(why: str, wait_s: float) -> None:
        output.event("retry", f"{why}: retrying in {wait_s:.1f} s", reason=why, wait_s=round(wait_s, 3))

    return SoftUnlearnClient(url, key, timeout=args.request_timeout, on_retry=on_retry,
                             retry=RetryPolicy(deadline_s=args.retry_for))


def _run(handler: Callable[[SoftUnlearnClient, argparse.Namespace, Output], int]) -> Callable[
        [argparse.Namespace], int]:
    """Wrap a command: make its client and map every failure onto an exit code and a message."""

    def run(args: argparse.Namespace) -> int:
        import httpx

        from app.client import ApiProblem
        from workers.cli.progress_output import Output
        from workers.cli.submission import InputProblem

        output = Output(json_lines=args.json or not sys.stdout.isatty())
        try:
            with _client(args, output) as client:
                return handler(client, args, output)
        except InputProblem as exc:
            return output.error(str(exc), EXIT_BAD_INPUT)
        except ApiProblem as exc:
            code = EXIT_BAD_INPUT if 400 <= exc.status < 500 else EXIT_INTERNAL
            hint = " (check the API key)" if exc.status == 401 else ""
            return output.error(f"the service answered {exc}{hint}", code, status=exc.status, code=exc.code)
        except httpx.HTTPError as exc:
            return output.error(f"the service could not be reached: {type(exc).__name__}: {exc}",
                                EXIT_INTERNAL)
        except OSError as exc:
            return output.error(f"{exc}", EXIT_BAD_INPUT)

    return run


def _submit(client: SoftUnlearnClient, args: argparse.Namespace, output: Output) -> int:
    from workers.cli.submission import read_inputs, submit

    return submit(client, read_inputs(args), args, output)


def _status(client: SoftUnlearnClient, args: argparse.Namespace, output: Output) -> int:
    job = client.get_job(args.job_id)
    error = job.get("error") or {}
    text = (f"job {job['id']}: {job['status']}" + (f" ({job['stage']}, {100 * job['progress']:.0f}%)"
            if job["status"] == "running" else "") + (f": {error.get('code')}: {error.get('message')}"
                                                      if error else ""))
    output.result(text, job=job, exit_code=EXIT_OK)
    return EXIT_OK


def _download(client: SoftUnlearnClient, args: argparse.Namespace, output: Output) -> int:
    job = client.get_job(args.job_id)
    if job["status"] in ("queued", "running"):
        return output.error(f"job {args.job_id} is still {job['status']}; wait for it: "
                            f"`softunlearn status {args.job_id}`", EXIT_NOT_FINISHED, job_id=args.job_id)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        return output.error(f"job {args.job_id} {job['status']}, it has no outputs"
                            + (f": {error.get('code')}: {error.get('message')}" if error else ""),
                            EXIT_JOB_ENDED, job_id=args.job_id, status=job["status"])
    from workers.cli.submission import fetch_and_gate

    return fetch_and_gate(client, job, args.gate, args.out, output)


def _cancel(client: SoftUnlearnClient, args: argparse.Namespace, output: Output) -> int:
    job = client.cancel_job(args.job_id)
    output.result(f"job {job['id']}: {job['status']} (cancel requested)", job=job, exit_code=EXIT_OK)
    return EXIT_OK


def _wait_existing(client: SoftUnlearnClient, args: argparse.Namespace, output: Output) -> int:
    from workers.cli.submission import wait_and_fetch

    return wait_and_fetch(client, args.job_id, args, output)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service")
    group.add_argument("--url", help=f"base URL of the service (default: ${URL_ENV})")
    group.add_argument("--api-key-env", default=KEY_ENV, metavar="VAR",
                       help=f"environment variable holding the API key (default: {KEY_ENV})")
    group.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    group.add_argument("--request-timeout", type=float, default=120.0, metavar="S",
                       help="seconds one request may take (default 120)")
    group.add_argument("--retry-for", type=float, default=300.0, metavar="S",
                       help="keep retrying an unreachable or busy service this long (default 300)")


def _output_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--gate", action="append", default=[], type=gate_argument,
                        metavar="'SPLIT.METRIC<=VALUE'",
                        help="exit 3 unless this holds on the report; repeatable (as for correct)")


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="give up waiting after this long (exit 5; the job goes on; default 3600)")
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help=argparse.SUPPRESS)


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "submit", help="upload inputs to a running service and submit a correction job",
        description="Upload the checkpoint and datasets (skipping files the service already has, by "
        "sha256), submit the job with an Idempotency-Key derived from the inputs (a re-run finds the "
        "same job), and with --wait follow it, download model, report and weights, and gate.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs")
    add_input_files(io, "Parquet/CSV/safetensors")
    io.add_argument("--spec", required=True, type=Path,
                    help="job JSON without the ids: objective (required), weighting, method, influence, "
                    "evaluation, guard, seed, queue and the service's other job fields")
    add_column_arguments(io)
    parser.add_argument("--queue", choices=("cpu", "gpu"), help="worker queue (default: the service's)")
    parser.add_argument("--idempotency-key", help="use this key instead of the one derived from the "
                        "inputs (e.g. to run the same inputs again as a new job)")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end, fetch and gate")
    _output_options(parser, "with --wait: write model.safetensors, report.json, report.html, "
                    "weights.parquet (and gates.json) here")
    _wait_options(parser)
    _connection_options(parser)
    parser.set_defaults(handler=_run(_submit))


def _add_job_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
                     handler: Callable[[SoftUnlearnClient, argparse.Namespace, Output], int],
                     with_outputs: bool = False, waits: bool = False) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job_id", metavar="JOB", help="the job's id")
    if with_outputs:
        _output_options(parser, "write model.safetensors, report.json, report.html, weights.parquet "
                        "(and gates.json) here")
    if waits:
        _wait_options(parser)
    _connection_options(parser)
    parser.set_defaults(handler=_run(handler))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``submit``, ``status``, ``wait``, ``download`` and ``cancel`` to ``sub``."""
    _add_submit(sub)
    _add_job_command(sub, "status", "print a job's status, stage, progress and error", _status)
    _add_job_command(sub, "wait", "follow a submitted job to its end, then fetch and gate as submit "
                     "--wait does", _wait_existing, with_outputs=True, waits=True)
    _add_job_command(sub, "download", "download a succeeded job's outputs and gate its report",
                     _download, with_outputs=True)
    _add_job_command(sub, "cancel", "cancel a queued or running job", _cancel)
