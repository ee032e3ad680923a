"""The tenant index: pages of jobs read only the page's manifests, stay right through status
changes and deletions, are rebuilt once for a store from before the index; tenant usage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models_store import LocalStore, Records
from models_store.errors import NotFound
from models_store.keys import new_id
from models_store.records import ArtifactRecord, JobRecord, TenantUsage, utcnow

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


class CountingStore(LocalStore):
    """A LocalStore counting the job manifests it reads."""

    manifest_reads = 0

    def get_bytes(self, key: str) -> bytes:
        if key.endswith("/job.json"):
            self.manifest_reads += 1
        return super().get_bytes(key)


def job(created_at: datetime, tenant: str = "acme", **fields: object) -> JobRecord:
    return JobRecord(id=new_id(), tenant=tenant, request={"model_id": new_id(), "train_dataset_id": new_id(),
                                                          "audit_dataset_id": new_id()},
                     spec={}, queue="cpu", created_at=created_at, updated_at=created_at, request_hash="h",
                     **fields)  # type: ignore[arg-type]


def write_legacy(records: Records, record: JobRecord) -> None:
    """A manifest written as the service did before the index existed."""
    assert records.store.create_exclusive(records.job_key(record.tenant, record.id),
                                          record.model_dump_json().encode())


def brute_force(records: Records, tenant: str, status: str | None) -> list[str]:
    """Every manifest read, sorted and filtered as a listing must be."""
    found = [records.get_job(tenant, i) for i in records.store.list_children(f"t/{tenant}/jobs")]
    jobs = sorted((j for j in found if j is not None), key=lambda j: (j.created_at, j.id), reverse=True)
    return [j.id for j in jobs if status is None or j.status == status]


def set_status(records: Records, record: JobRecord, status: str, tmp_path: Path) -> None:
    if status == "succeeded":  # outputs are published before the manifest says succeeded (workers/jobs.py)
        out = tmp_path / f"out-{record.id}"
        out.mkdir()
        (out / "report.json").write_bytes(b"{}" * 10)
        (out / "model.safetensors").write_bytes(b"x" * 100)
        records.store.publish_dir(records.output_prefix(record.tenant, record.id), out)

    def change(current: JobRecord) -> JobRecord:
        current.status = status  # type: ignore[assignment]
        return current

    records.update_job(record.tenant, record.id, change)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Records, CountingStore]:
    """2,000 jobs of tenant acme: 1,500 written before the index existed, 500 through Records
    (some older than the legacy ones), 300 moved through statuses, 50 deleted; and 5 of globex."""
    rng = random.Random(7)
    tmp_path = tmp_path_factory.mktemp("crowded")
    store = CountingStore(tmp_path / "store")
    records = Records(store)
    legacy = [job(T0 + timedelta(seconds=rng.randrange(100_000))) for _ in range(1500)]
    for record in legacy:
        write_legacy(records, record)
    assert not store.exists(records.index_key("acme"))
    store.manifest_reads = 0
    records.job_page("acme", 10, 0)  # the first read rebuilds the index, reading every manifest once
    assert store.manifest_reads == 1500 + 10
    created = [job(T0 + timedelta(seconds=rng.randrange(-1000, 110_000))) for _ in range(500)]
    created += [job(created[0].created_at)]  # a tie on created_at: ordered by id
    for record in created:
        assert records.create_job(record)
    for record in [job(T0, tenant="globex") for _ in range(5)]:
        assert records.create_job(record)
    everyone = legacy + created
    for record in rng.sample(everyone, 300):
        set_status(records, record, rng.choice(STATUSES[1:]), tmp_path)
    for record in rng.sample(everyone, 50):
        assert records.delete_job("acme", record.id)
    return records, store


PAGES = [(50, 0, None), (50, 1900, None), (200, 37, None), (7, 0, "queued"), (20, 10, "running"),
         (200, 0, "succeeded"), (5, 3, "failed"), (200, 0, "canceled"), (10, 5000, None), (1, 0, "canceled")]


@pytest.mark.parametrize(("limit", "offset", "status"), PAGES)
def test_a_page_matches_brute_force_and_reads_only_its_manifests(
        crowded: tuple[Records, CountingStore], limit: int, offset: int, status: str | None) -> None:
    records, store = crowded
    expected = brute_force(records, "acme", status)
    store.manifest_reads = 0
    page = records.job_page("acme", limit, offset, status)
    assert store.manifest_reads <= limit
    assert [j.id for j in page.items] == expected[offset: offset + limit]
    assert page.total == len(expected)
    assert all(j.tenant == "acme" for j in page.items)


def test_usage_and_in_flight_match_the_manifests(crowded: tuple[Records, CountingStore]) -> None:
    records, store = crowded
    every = [records.get_job("acme", i) for i in brute_force(records, "acme", None)]
    in_flight = [j.id for j in every if j is not None and not j.terminal]
    succeeded = sum(1 for j in every if j is not None and j.status == "succeeded")
    assert [j.id for j in records.in_flight_jobs("acme")] == in_flight
    store.manifest_reads = 0
    usage = records.tenant_usage("acme")
    assert store.manifest_reads == 0
    assert usage.jobs_in_flight == len(in_flight) and usage.stored_bytes == succeeded * 120
    assert records.tenant_usage("globex").jobs_in_flight == 5


def test_usage_counts_uploads_and_outputs_until_deleted(tmp_path: Path) -> None:
    records = Records(LocalStore(tmp_path))
    model = ArtifactRecord(id=new_id(), tenant="acme", kind="models", data_name="model.safetensors",
                           format="safetensors", sha256="0" * 64, size_bytes=1000, created_at=utcnow())
    dataset = model.model_copy(update={"id": new_id(), "kind": "datasets", "data_name": "data.csv",
                                       "format": "csv", "size_bytes": 250})
    for artifact in (model, dataset):
        records.store.put_bytes(records.data_key(artifact), b"x" * artifact.size_bytes)
        records.put_artifact(artifact)
    done = job(utcnow())
    records.create_job(done)
    assert records.tenant_usage("acme") == TenantUsage(stored_bytes=1250, jobs_in_flight=1)
    set_status(records, done, "succeeded", tmp_path)
    assert records.tenant_usage("acme").stored_bytes == 1250 + 120
    assert records.tenant_usage("acme").jobs_in_flight == 0
    assert records.delete_artifact("acme", "models", model.id)
    assert not records.delete_artifact("acme", "models", model.id)  # twice: counted once
    assert records.get_artifact("acme", "models", model.id) is None
    assert not records.store.exists(records.data_key(model))
    assert records.tenant_usage("acme").stored_bytes == 250 + 120
    assert records.delete_job("acme", done.id) and not records.delete_job("acme", done.id)
    assert records.tenant_usage("acme").stored_bytes == 250
    assert records.store.list_children(records.output_prefix("acme", done.id)) == []
    records.store.delete_prefix(records.index_key("acme"))  # rebuilt from the records: same answer
    assert records.tenant_usage("acme").stored_bytes == 250


def test_an_unreadable_index_is_rebuilt(tmp_path: Path) -> None:
    records = Records(LocalStore(tmp_path))
    first, second = job(T0), job(T0 + timedelta(seconds=1))
    records.create_job(first)
    records.create_job(second)
    records.store.put_bytes(records.index_key("acme"), b"{not json")
    assert [j.id for j in records.job_page("acme", 10, 0).items] == [second.id, first.id]


def test_an_entry_without_manifest_is_skipped_then_dropped(tmp_path: Path) -> None:
    """A crash between writing the index entry and the manifest (create_job writes the entry first)."""
    records = Records(LocalStore(tmp_path))
    kept = job(T0)
    records.create_job(kept)
    young, old = job(utcnow()), job(utcnow() - timedelta(minutes=5))
    for ghost in (young, old):
        records.create_job(ghost)
        records.store.delete_prefix(records.job_key("acme", ghost.id).rsplit("/", 1)[0])
    page = records.job_page("acme", 10, 0)
    assert [j.id for j in page.items] == [kept.id] and page.total == 3
    again = records.job_page("acme", 10, 0)  # the old one was dropped; the young one may still be
    assert [j.id for j in again.items] == [kept.id] and again.total == 2  # being created


def test_an_entry_left_stale_by_a_crash_is_healed_by_the_reader(tmp_path: Path) -> None:
    """A crash after a manifest's change of status and before its index entry was written."""
    records = Records(LocalStore(tmp_path))
    record = job(T0)
    records.create_job(record)
    changed = record.model_copy(update={"status": "failed"})
    records.store.put_bytes(records.job_key("acme", record.id), changed.model_dump_json().encode())
    assert records.job_page("acme", 10, 0, "queued").items == []  # the manifest wins
    assert records.job_page("acme", 10, 0, "queued").total == 0  # and the entry was re-synced
    assert [j.id for j in records.job_page("acme", 10, 0, "failed").items] == [record.id]


def test_update_of_a_deleted_job_is_not_found_and_adds_no_entry(tmp_path: Path) -> None:
    records = Records(LocalStore(tmp_path))
    record = job(T0, status="canceled")
    records.create_job(record)
    assert records.delete_job("acme", record.id)
    with pytest.raises(NotFound):
        records.update_job("acme", record.id, lambda j: j)
    assert records.job_page("acme", 10, 0).total == 0


def test_artifacts_are_found_by_digest_in_old_and_new_index_lines(tmp_path: Path) -> None:
    records = Records(LocalStore(tmp_path))
    base = ArtifactRecord(id=new_id(), tenant="acme", kind="models", data_name="model.safetensors",
                          format="safetensors", sha256="a" * 64, size_bytes=10, created_at=utcnow())
    twin = base.model_copy(update={"id": new_id()})
    other = base.model_copy(update={"id": new_id(), "sha256": "b" * 64})
    data = base.model_copy(update={"id": new_id(), "kind": "datasets", "data_name": "d.csv", "format": "csv"})
    for artifact in (base, twin, other, data):
        records.put_artifact(artifact)
    found, total = records.artifact_page("acme", "models", 10, 0, "a" * 64)
    assert total == 2 and sorted(a.id for a in found) == sorted([base.id, twin.id])
    assert records.artifact_page("acme", "models", 1, 1, "a" * 64)[0][0].id == sorted([base.id, twin.id])[1]
    assert records.artifact_page("acme", "models", 10, 0)[1] == 3
    assert records.artifact_page("globex", "models", 10, 0, "a" * 64) == ([], 0)
    # An index written before digests were kept: its lines lack them; lookups read the records.
    raw = records.store.get_bytes(records.index_key("acme")).decode()
    old = "\n".join(" ".join(line.split(" ")[:4]) if line.startswith("a ") else line
                    for line in raw.split("\n"))
    assert old != raw
    records.store.put_bytes(records.index_key("acme"), old.encode())
    found, total = records.artifact_page("acme", "models", 10, 0, "b" * 64)
    assert total == 1 and found[0].id == other.id
