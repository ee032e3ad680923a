"""What the client commands print: one JSON object per line for pipelines (stdout not a
terminal, or ``--json``), a progress line and plain sentences for people on a terminal."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["Output"]


class Output:
    """Prints events. In JSON mode each event is ``{"event": KIND, ...fields}`` on stdout; on a
    terminal a job's progress rewrites one line on stderr and other events are sentences."""

    def __init__(self, json_lines: bool, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self._out, self._err = out or sys.stdout, err or sys.stderr
        self._last_progress: tuple[str, str | None, int] | None = None
        self._progress_open = False
        self._started = time.monotonic()

    def event(self, kind: str, text: str, **fields: Any) -> None:
        """Print one event: ``fields`` as JSON, or ``text`` for a person."""
        if self.json_lines:
            print(json.dumps({"event": kind, **fields}, default=str), file=self._out, flush=True)
            return
        self._end_progress_line()
        print(text, file=self._err, flush=True)

    def job_update(self, job: dict[str, Any]) -> None:
        """A job status read: printed only when status, stage or whole percent changed."""
        percent = int(100 * float(job.get("progress") or 0.0))
        key = (str(job.get("status")), job.get("stage"), percent)
        if key == self._last_progress:
            return
        self._last_progress = key
        if self.json_lines:
            self.event("progress", "", job_id=job.get("id"), status=job.get("status"),
                       stage=job.get("stage"), progress=job.get("progress"))
            return
        elapsed = time.monotonic() - self._started
        bar = "#" * (percent // 5) + "-" * (20 - percent // 5)
        line = f"\r[{bar}] {percent:3d}% {key[0]:<9} {key[1] or '':<10} {elapsed:6.1f}s"
        print(line, end="", file=self._err, flush=True)
        self._progress_open = True

    def _end_progress_line(self) -> None:
        if self._progress_open:
            print(file=self._err, flush=True)
            self._progress_open = False

    def result(self, text: str, **fields: Any) -> None:
        """The command's outcome: the last JSON line, or text on stdout for a person."""
        if self.json_lines:
            self.event("result", text, **fields)
            return
        self._end_progress_line()
        print(text, file=self._out, flush=True)

    def error(self, message: str, exit_code: int, **fields: Any) -> int:
        """Say what went wrong (stderr, and a JSON ``error`` event in JSON mode); returns ``exit_code``."""
        self._end_progress_line()
        if self.json_lines:
            print(json.dumps({"event": "error", "message": message, "exit_code": exit_code, **fields},
                             default=str), file=self._out, flush=True)
        print(f"error: {message}", file=self._err, flush=True)
        return exit_code
