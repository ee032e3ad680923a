"""What the client commands print for people (terminal) and for pipelines (JSON lines)."""

from __future__ import annotations

import io
import json

from workers.cli.progress_output import Output


def job(status: str, stage: str | None, progress: float) -> dict[str, object]:
    return {"id": "j1", "status": status, "stage": stage, "progress": progress}


def test_json_mode_prints_one_object_per_change() -> None:
    out, err = io.StringIO(), io.StringIO()
    output = Output(json_lines=True, out=out, err=err)
    for update in (job("queued", None, 0), job("queued", None, 0), job("running", "load", 0.001),
                   job("running", "influence", 0.5), job("succeeded", "done", 1.0)):
        output.job_update(update)
    output.result("done", exit_code=0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["progress"] * 4 + ["result"]
    assert [line.get("stage") for line in lines[:4]] == [None, "load", "influence", "done"]
    assert lines[-1] == {"event": "result", "exit_code": 0}
    assert output.error("bad", 2) == 2 and "error: bad" in err.getvalue()


def test_terminal_mode_rewrites_one_progress_line_then_prints_sentences() -> None:
    out, err = io.StringIO(), io.StringIO()
    output = Output(json_lines=False, out=out, err=err)
    output.event("uploaded", "model m1 (uploaded)", role="model")
    output.job_update(job("running", "influence", 0.25))
    output.job_update(job("running", "unlearn", 0.75))
    output.result("job j1 succeeded: target met.")
    assert err.getvalue().count("\r[") == 2 and " 75% running   unlearn" in err.getvalue()
    assert err.getvalue().startswith("model m1 (uploaded)\n") and err.getvalue().endswith("\n")
    assert out.getvalue() == "job j1 succeeded: target met.\n"
