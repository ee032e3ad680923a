"""The per-tenant index: one small entry per job and per uploaded artifact, in one document.

``GET /v1/jobs`` pages, the reconciler's list of jobs in flight and a tenant's usage (stored
bytes, jobs in flight) are answered from this document, never by reading every manifest. It is
stored at ``t/{tenant}/index.json`` and changed only under the store's lock
(:meth:`~models_store.base.Store.update`), by :class:`~models_store.records.Records`.

A job entry holds what a listing filters and sorts on (creation time, status) and the bytes of
the job's published outputs; it is written from the manifest (the record of truth) after every
change of status, so a reader that finds an entry disagreeing with its manifest trusts the
manifest and re-syncs the entry. An artifact entry holds the artifact's byte size.

The stored form is a line per entry (``j ID CREATED_US STATUS OUTPUT_BYTES``, newest job first;
``a ID KIND SIZE SHA256``; indexes written before the digest was kept have ``a ID KIND SIZE``)
after a header line: thousands of entries parse in about a millisecond, and
only the entries a caller asks for become objects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

__all__ = ["HEADER", "INDEX_NAME", "ArtifactEntry", "JobEntry", "TenantIndex", "micros"]

INDEX_NAME = "index.json"
"""File name of the index under the tenant's prefix (a historical name: the content is lines)."""
HEADER = "softunlearn-tenant-index 1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IN_FLIGHT = frozenset({"queued", "running"})


def micros(moment: datetime) -> int:
    """Microseconds since the epoch (an exact, sortable integer for a timestamp)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    delta = aware - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class JobEntry(NamedTuple):
    """A job as the index knows it."""

    id: str
    created_us: int
    status: str
    output_bytes: int = 0

    @property
    def in_flight(self) -> bool:
        """Whether the job is queued or running."""
        return self.status in IN_FLIGHT


class ArtifactEntry(NamedTuple):
    """An uploaded model or dataset as the index knows it."""

    kind: str
    size_bytes: int
    sha256: str | None = None


def _job(row: list[str]) -> JobEntry:
    return JobEntry(row[0], int(row[1]), row[2], int(row[3]))


def _sort_key(row: list[str]) -> tuple[int, str]:
    return int(row[1]), row[0]


class TenantIndex:
    """The index document: jobs newest first (by creation time, then id), artifacts by id."""

    def __init__(self) -> None:
        self._jobs: list[list[str]] = []
        self.artifacts: dict[str, ArtifactEntry] = {}

    @classmethod
    def from_bytes(cls, raw: bytes) -> TenantIndex:
        """Parse a stored index.

        Raises:
            ValueError: not an index of this version, or a malformed line (the caller rebuilds it).
        """
        lines = raw.decode("ascii").split("\n")
        if lines[0] != HEADER:
            raise ValueError("not a tenant index of version 1")
        index = cls()
        for line in lines[1:]:
            row = line.split(" ")
            if row[0] == "j" and len(row) == 5:
                index._jobs.append(row[1:])
            elif row[0] == "a" and len(row) in (4, 5):
                digest = row[4] if len(row) == 5 else None
                index.artifacts[row[1]] = ArtifactEntry(row[2], int(row[3]), digest)
            elif line:
                raise ValueError(f"malformed index line {line[:80]!r}")
        return index

    def to_bytes(self) -> bytes:
        """The stored form."""
        lines = [HEADER, *("j " + " ".join(row) for row in self._jobs),
                 *(f"a {key} {a.kind} {a.size_bytes}" + (f" {a.sha256}" if a.sha256 else "")
                   for key, a in sorted(self.artifacts.items()))]
        return ("\n".join(lines) + "\n").encode("ascii")

    def _rows(self, status: str | None, in_flight: bool) -> list[list[str]]:
        return [row for row in self._jobs
                if (status is None or row[2] == status) and (not in_flight or row[2] in IN_FLIGHT)]

    def jobs(self, status: str | None = None, in_flight: bool = False) -> list[JobEntry]:
        """The job entries, newest first: all, those with ``status``, or those queued or running."""
        return [_job(row) for row in self._rows(status, in_flight)]

    def page(self, offset: int, limit: int, status: str | None = None) -> tuple[list[JobEntry], int]:
        """Entries ``offset`` to ``offset + limit`` (newest first, optionally only with
        ``status``) and how many match in all."""
        rows = self._rows(status, False)
        return [_job(row) for row in rows[offset: offset + limit]], len(rows)

    def job(self, job_id: str) -> JobEntry | None:
        """The entry of ``job_id``, if any."""
        return next((_job(row) for row in self._jobs if row[0] == job_id), None)

    def put_job(self, entry: JobEntry) -> None:
        """Insert or replace the entry of ``entry.id``, keeping newest-first order (a new job is
        usually the newest: found at the front)."""
        new = [entry.id, str(entry.created_us), entry.status, str(entry.output_bytes)]
        for position, row in enumerate(self._jobs):
            if row[0] == entry.id:
                if row[1] == new[1]:
                    self._jobs[position] = new
                    return
                del self._jobs[position]
                break
        key, position = (entry.created_us, entry.id), 0
        while position < len(self._jobs) and _sort_key(self._jobs[position]) > key:
            position += 1
        self._jobs.insert(position, new)

    def set_jobs(self, entries: list[JobEntry]) -> None:
        """Replace every job entry (a rebuild)."""
        self._jobs = [[e.id, str(e.created_us), e.status, str(e.output_bytes)] for e in entries]
        self._jobs.sort(key=_sort_key, reverse=True)

    def drop_job(self, job_id: str) -> None:
        """Remove the entry of ``job_id`` (no error when absent)."""
        self._jobs = [row for row in self._jobs if row[0] != job_id]

    def artifact_ids(self, kind: str, sha256: str | None = None) -> list[str]:
        """Ids of the artifacts of ``kind``, sorted; with ``sha256``, those whose digest is that or
        unknown (entries from before digests were kept: the caller checks their records)."""
        return sorted(key for key, a in self.artifacts.items()
                      if a.kind == kind and (sha256 is None or a.sha256 in (sha256, None)))

    def stored_bytes(self) -> int:
        """Bytes of the uploads plus the published outputs of the jobs."""
        return sum(a.size_bytes for a in self.artifacts.values()) + sum(int(row[3]) for row in self._jobs)

    def jobs_in_flight(self) -> int:
        """Jobs queued or running."""
        return sum(1 for row in self._jobs if row[2] in IN_FLIGHT)
