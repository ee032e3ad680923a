"""Exit codes of the ``softunlearn`` commands (``correct`` and the service client commands)."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_JOB_ENDED", "EXIT_NOT_FINISHED", "EXIT_OK",
           "EXIT_TARGET_MISSED"]

EXIT_OK = 0
"""The job succeeded, its target was met and every ``--gate`` passed."""
EXIT_INTERNAL = 1
"""An unexpected exception (a bug), or a service that stayed unreachable through every retry."""
EXIT_BAD_INPUT = 2
"""Bad input: the message names what to change; nothing was written (a 4xx for the client)."""
EXIT_TARGET_MISSED = 3
"""The job succeeded (outputs written) but its target was not met (report ``target_met`` false)
or a ``--gate`` failed."""
EXIT_JOB_ENDED = 4
"""``submit``/``download``: the job failed or was canceled (its error is printed)."""
EXIT_NOT_FINISHED = 5
"""``submit --wait``: the job was still queued or running when ``--timeout`` ran out;
``download``: the job has not finished yet."""
