"""Keep server paths and internal file names out of what clients read (torch-free).

Job errors can quote an exception raised deep in a library (``[Errno 2] No such file or
directory: '/data/store/t/acme/datasets/…/data.parquet'``); such text reaches the client through
the manifest, so it is redacted where a failure is recorded and again where the API shows it.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED_PATH", "redact_paths"]

REDACTED_PATH = "<server file>"
# An absolute POSIX path with at least two components, or a Windows drive path; not a URL's path
# ("://host/…") and not an API route the message may name on purpose.
_PATH = re.compile(r"(?<![\w:/.])(?:/(?!v1/)[^\s'\"/:,;()\[\]<>]+){2,}/?|\b[A-Za-z]:\\[^\s'\"]+")
_STAGING_NAME = re.compile(r"\b(?:stage|dir|old)-[0-9a-f]{16}-[0-9a-f]{32}\b")


def redact_paths(text: str) -> str:
    """``text`` with every absolute file path and staging file name replaced by a placeholder."""
    return _STAGING_NAME.sub(REDACTED_PATH, _PATH.sub(REDACTED_PATH, text))
