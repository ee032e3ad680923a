"""``softunlearn submit``: upload what the service lacks, submit once, wait, fetch, gate.

Torch-free (the thin client runs it): inputs are read as JSON and bytes only; the service
validates them and its 4xx answers become exit 2 with the service's message.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.client import JobCanceled, JobFailed, SoftUnlearnClient, submission_key
from workers.cli.arguments import missing_columns, overlay_columns
from workers.cli.exit_codes import EXIT_JOB_ENDED, EXIT_NOT_FINISHED, EXIT_OK, EXIT_TARGET_MISSED
from workers.cli.gates import Gate, apply_gates
from workers.cli.progress_output import Output

__all__ = ["IDS", "OUTPUT_FILES", "InputProblem", "JobInputs", "fetch_and_gate", "read_inputs", "submit"]

IDS = ("model_id", "train_dataset_id", "audit_dataset_id", "eval_dataset_id")
"""Job fields ``submit`` fills in from the uploads; a ``--spec`` must not set them."""
OUTPUT_FILES = {"model": "model.safetensors", "report": "report.json", "report.html": "report.html",
                "weights": "weights.parquet"}
"""Outputs of a succeeded job and the file each is written to under ``--out``."""


class InputProblem(ValueError):
    """A local input is missing or malformed (exit 2, before anything is sent)."""


@dataclass(frozen=True)
class JobInputs:
    """What ``submit`` sends: files with their architecture/schema, and the job fields."""

    model: Path
    architecture: dict[str, Any]
    datasets: dict[str, Path]
    schema: dict[str, Any]
    job_fields: dict[str, Any]


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputProblem(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputProblem(f"{what} {path} is not readable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputProblem(f"{what} {path} must hold a JSON object")
    return value


def _schema(args: argparse.Namespace) -> dict[str, Any]:
    schema = overlay_columns(_json_object(args.schema, "--schema") if args.schema else {}, args)
    missing = missing_columns(schema)
    if missing:
        raise InputProblem(missing)
    return schema


def _job_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _json_object(args.spec, "--spec")
    named = [name for name in IDS if name in fields]
    if named:
        raise InputProblem(f"--spec sets {', '.join(named)}: submit fills the ids in from --model, "
                           "--train, --audit and --eval; remove them from the spec")
    if args.queue:
        fields["queue"] = args.queue
    objective = fields.get("objective")
    if not isinstance(objective, dict) or "metric" not in objective:
        raise InputProblem("--spec must set objective.metric (demographic_parity, equal_opportunity, "
                           "equalized_odds or robustness)")
    return fields


def read_inputs(args: argparse.Namespace) -> JobInputs:
    """Check and read the local inputs of ``submit``.

    Raises:
        InputProblem: a file is missing, or a JSON input is malformed or incomplete.
    """
    files = {"model": args.model, "train": args.train, "audit": args.audit, "eval": args.eval}
    for role, path in files.items():
        if path is not None and not path.is_file():
            raise InputProblem(f"--{role} {path} is not a file")
    datasets = {role: path for role, path in files.items() if role != "model" and path is not None}
    return JobInputs(model=args.model, architecture=_json_object(args.arch, "--arch"), datasets=datasets,
                     schema=_schema(args), job_fields=_job_fields(args))


def _announce(output: Output, role: str, found: dict[str, Any]) -> None:
    reused = bool(found.get("reused"))
    what = "model" if role == "model" else f"{role} dataset"
    output.event("uploaded", f"{what} {found['id']} ({'already there' if reused else 'uploaded'})",
                 role=role, id=found["id"], sha256=found["sha256"], reused=reused)


def _upload(client: SoftUnlearnClient, inputs: JobInputs, output: Output) -> dict[str, str]:
    model = client.upload_model(inputs.model, inputs.architecture, reuse=True)
    _announce(output, "model", model)
    ids = {"model_id": str(model["id"])}
    for role, path in inputs.datasets.items():
        found = client.upload_dataset(path, inputs.schema, reuse=True)
        _announce(output, role, found)
        ids[f"{role}_dataset_id"] = str(found["id"])
    return ids


def fetch_and_gate(client: SoftUnlearnClient, job: dict[str, Any], gates: list[Gate], out: Path | None,
                   output: Output) -> int:
    """For a succeeded job: download its outputs to ``out`` (when given), evaluate ``gates`` on
    its report (results in ``out/gates.json``) and return exit 0 (target met, gates passed) or 3."""
    job_id = str(job["id"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for output_name, file_name in OUTPUT_FILES.items():
            client.download(job_id, output_name, out / file_name)
        report: dict[str, Any] = json.loads((out / OUTPUT_FILES["report"]).read_text(encoding="utf-8"))
        output.event("downloaded", f"outputs in {out}", job_id=job_id, out=str(out),
                     files=sorted(OUTPUT_FILES.values()))
    else:
        report = client.get_report(job_id)
    passed = apply_gates(report, gates)
    if out is not None and gates:
        (out / "gates.json").write_text(json.dumps(report["gates"], indent=2) + "\n", encoding="utf-8")
    for row in report["gates"]:
        output.event("gate", f"gate {'PASS' if row['passed'] else 'FAIL'}: {row['gate']} ({row['message']})",
                     **row)
    target_met = bool(report.get("target_met"))
    code = EXIT_OK if target_met and passed else EXIT_TARGET_MISSED
    headline = (report.get("target") or {}).get("headline") or ""
    verdict = "target met" if target_met else "target missed"
    gate_text = "" if not gates else (", every gate passed" if passed else ", a gate failed")
    output.result(f"job {job_id} succeeded: {verdict}{gate_text}. {headline}".strip(), job_id=job_id,
                  status="succeeded", target_met=target_met, gates_passed=passed, exit_code=code,
                  out=str(out) if out is not None else None)
    return code


def submit(client: SoftUnlearnClient, inputs: JobInputs, args: argparse.Namespace, output: Output) -> int:
    """Upload, submit (with a derived Idempotency-Key unless one is given), and with
    ``args.wait`` wait for the end, fetch and gate. Returns the exit code."""
    body: dict[str, Any] = {**inputs.job_fields, **_upload(client, inputs, output)}
    key = args.idempotency_key or submission_key(body)
    job = client.create_job(body, idempotency_key=key)
    output.event("submitted", f"job {job['id']} {job['status']}", job_id=job["id"], status=job["status"],
                 idempotency_key=key)
    if not args.wait:
        output.result(f"job {job['id']} submitted; follow it with: softunlearn status {job['id']}",
                      job_id=job["id"], status=job["status"], exit_code=EXIT_OK)
        return EXIT_OK
    return wait_and_fetch(client, str(job["id"]), args, output)


def wait_and_fetch(client: SoftUnlearnClient, job_id: str, args: argparse.Namespace, output: Output) -> int:
    """Wait for job ``job_id`` to end, then fetch and gate (exit 0/3), or report its failure
    (exit 4) or that it is still going when ``args.timeout`` runs out (exit 5)."""
    try:
        job = client.wait(job_id, timeout=args.timeout, interval=args.poll_interval,
                          on_update=output.job_update)
    except TimeoutError:
        return output.error(f"job {job_id} had not finished after {args.timeout:g} s; it goes on: "
                            f"`softunlearn status {job_id}`, later `softunlearn download {job_id}`",
                            EXIT_NOT_FINISHED, job_id=job_id)
    except JobFailed as exc:
        return output.error(str(exc), EXIT_JOB_ENDED, job_id=job_id, status="failed", code=exc.code)
    except JobCanceled as exc:
        return output.error(str(exc), EXIT_JOB_ENDED, job_id=job_id, status="canceled")
    return fetch_and_gate(client, job, args.gate, args.out, output)
