"""S3Store against a real S3-protocol server process (tests/s3_server.py): the LocalStore tests'
guarantees (atomic objects, byte caps leaving nothing, key grammar, exclusive creation, no lost
update), plus multipart transfers, listing and deletion with S3 semantics, garbage collection,
and configuration errors that say what to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from models_store import InvalidKey, LocalStore, NotFound, StoreUnavailable, TooLarge, open_store
from models_store.keys import new_id, object_key
from models_store.s3 import S3Store, parse_s3_url
from tests.s3_support import BUCKET, ROOT, S3Server, s3_url
from workers.settings import ServiceSettings

MiB = 1024 * 1024


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path) -> S3Store:
    """An S3Store on a fresh prefix of the tests' bucket, staging in ``tmp_path/staging``."""
    return S3Store(parse_s3_url(s3_url(), s3_server.endpoint), staging_dir=tmp_path / "staging")


def objects(store: S3Store) -> list[str]:
    """Every key stored under the store's prefix."""
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.location.bucket, Prefix=store.location.object_name(""))
    return sorted(store.location.key_of(item["Key"]) for page in pages for item in page.get("Contents", []))


def staging(store: S3Store) -> list[str]:
    return sorted(p.name for p in store.staging_dir.iterdir() if p.is_file())


def test_put_get_and_hash(store: S3Store) -> None:
    key = object_key("acme", "models", new_id(), "model.safetensors")
    with store.stage(100) as staged:
        staged.write(b"abc")
        assert staged.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        assert staged.path.read_bytes() == b"abc"  # validation reads the staged bytes locally
        staged.commit(key)
    assert store.get_bytes(key) == b"abc" and store.size(key) == 3 and store.exists(key)
    assert list(store.open_chunks(key, 2)) == [b"ab", b"c"]
    missing = object_key("acme", "models", new_id(), "model.safetensors")
    for read in (store.get_bytes, store.size, store.open_chunks, lambda k: store.local_path(k).__enter__()):
        with pytest.raises(NotFound):
            read(missing)
    assert not store.exists(missing) and staging(store) == []


def test_cap_and_abandoned_stage_leave_nothing(store: S3Store) -> None:
    with pytest.raises(TooLarge), store.stage(4) as staged:
        staged.write(b"abc")
        staged.write(b"de")
    with pytest.raises(RuntimeError), store.stage() as staged:
        staged.write(b"partial")
        raise RuntimeError("crash before commit")
    assert objects(store) == [] and staging(store) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "t/a/../../x", "t//x", ".tmp/x", "T/UPPER", ""])
def test_keys_outside_the_grammar_are_refused(store: S3Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


_UPDATER = """
import sys, threading
from pathlib import Path
from models_store.s3 import S3Store, parse_s3_url

store = S3Store(parse_s3_url(sys.argv[1], sys.argv[2]), staging_dir=Path(sys.argv[3]))

def bump(current):
    return str(int(current or b"0") + 1).encode()

def run():
    for _ in range(int(sys.argv[4])):
        store.update("t/a/counter", bump)

threads = [threading.Thread(target=run) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_create_exclusive_and_concurrent_updaters_lose_no_update(store: S3Store, tmp_path: Path) -> None:
    """Three processes (each its own client, as on three hosts) of two threads each increment one
    counter: every increment is there (If-Match writes, retried on 412/409)."""
    assert store.create_exclusive("t/a/idempotency/x", b"1")
    assert not store.create_exclusive("t/a/idempotency/x", b"2")
    assert store.get_bytes("t/a/idempotency/x") == b"1"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    per_thread = 5
    where = [str(store.location), store.location.endpoint]
    updaters = [subprocess.Popen([sys.executable, "-c", _UPDATER, *where, str(tmp_path / f"host{i}"),
                                  str(per_thread)], env=env, cwd=ROOT) for i in range(3)]
    assert [updater.wait(120) for updater in updaters] == [0, 0, 0]
    assert store.get_bytes("t/a/counter") == str(3 * 2 * per_thread).encode()
    calls: list[bytes | None] = []

    def same(current: bytes | None) -> bytes:
        calls.append(current)
        return current or b""

    assert store.update("t/a/counter", same) == b"30"
    assert calls == [b"30"]  # unchanged: nothing written (a second call would mean a retry)


def test_publish_dir_replaces_the_earlier_publication(store: S3Store, tmp_path: Path) -> None:
    source = tmp_path / "out"
    source.mkdir()
    (source / "report.json").write_text("{}")
    (source / "extra.bin").write_bytes(b"x")
    (source / ".hidden").write_text("not a key")
    store.publish_dir("t/a/jobs/j/output", source)
    assert store.list_children("t/a/jobs/j/output") == ["extra.bin", "report.json"]
    (source / "extra.bin").unlink()
    (source / "report.json").write_text('{"v": 2}')
    store.publish_dir("t/a/jobs/j/output", source)
    assert store.get_bytes("t/a/jobs/j/output/report.json") == b'{"v": 2}'
    assert store.list_children("t/a/jobs/j/output") == ["report.json"] and staging(store) == []


def test_large_objects_go_up_in_parts_and_stream_back(s3_server: S3Server, tmp_path: Path) -> None:
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    store = S3Store(parse_s3_url(s3_url(), s3_server.endpoint), staging_dir=tmp_path / "staging",
                    transfer=parts)
    data = os.urandom(11 * MiB)
    key = "t/a/datasets/d/data.parquet"
    with store.stage() as staged:
        for start in range(0, len(data), MiB):
            staged.write(data[start: start + MiB])
        staged.commit(key)
    etag = store.client.head_object(Bucket=store.location.bucket, Key=store.name_of(key))["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload of three parts
    chunks = list(store.open_chunks(key, 4 * MiB))
    assert [len(c) for c in chunks] == [4 * MiB, 4 * MiB, 3 * MiB] and b"".join(chunks) == data
    with store.local_path(key) as path:
        assert path.read_bytes() == data
    assert not path.exists() and staging(store) == []


def test_listing_and_deleting_prefixes(store: S3Store) -> None:
    for key in ("t/a/jobs/1/job.json", "t/a/jobs/1/output/report.json", "t/a/jobs/2/job.json", "t/a/x"):
        store.put_bytes(key, b"{}")
    assert store.list_children("t/a") == ["jobs", "x"]
    assert store.list_children("t/a/jobs") == ["1", "2"] and store.list_children("t/none") == []
    store.delete_prefix("t/a/jobs/1")
    store.delete_prefix("t/a/jobs/missing")
    store.delete_prefix("t/a/x")
    assert objects(store) == ["t/a/jobs/2/job.json"]


_STAGE_AND_DIE = """
import os, sys
from pathlib import Path
from models_store.s3 import S3Store, parse_s3_url
store = S3Store(parse_s3_url(sys.argv[1], sys.argv[2]), staging_dir=Path(sys.argv[3]))
context = store.stage()
staged = context.__enter__()
staged.write(b"half an upload")
staged.path
os._exit(0)  # no cleanup, as after SIGKILL
"""


def test_garbage_collection_removes_dead_staging_and_stale_uploads(store: S3Store) -> None:
    subprocess.run([sys.executable, "-c", _STAGE_AND_DIE, str(store.location), store.location.endpoint,
                    str(store.staging_dir)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   cwd=ROOT)
    [dead] = staging(store)
    store.client.create_multipart_upload(Bucket=BUCKET, Key=store.name_of("t/a/models/m/model.safetensors"))
    with store.stage() as live:
        live.write(b"in progress")
        # The dead process's file and the upload (moto dates every upload 2010-11-10: "old").
        assert store.collect_garbage(max_age_s=3600) == 2
        assert staging(store) == [live.path.name]
    uploads = store.client.list_multipart_uploads(Bucket=BUCKET, Prefix=store.location.object_name(""))
    assert uploads.get("Uploads", []) == [] and dead not in staging(store)


def test_configuration_selects_the_store_and_errors_say_what_to_change(s3_server: S3Server,
                                                                         tmp_path: Path) -> None:
    settings = ServiceSettings(store=s3_url("sel"), s3_endpoint_url=s3_server.endpoint)
    assert isinstance(open_store(settings.store, endpoint_url=settings.s3_endpoint_url), S3Store)
    assert isinstance(open_store(str(tmp_path / "local")), LocalStore)
    missing = open_store("s3://no-such-bucket/p", endpoint_url=s3_server.endpoint)
    with pytest.raises(StoreUnavailable, match=r"bucket 'no-such-bucket' does not exist.*SOFTUNLEARN_STORE"):
        missing.check_writable()
    unreachable = open_store("s3://bucket/p", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreUnavailable, match=r"cannot reach the S3 endpoint.*SOFTUNLEARN_S3_ENDPOINT_URL"):
        unreachable.get_bytes("t/a/x")
    bad_urls = (("s3://", "bucket name"), ("s3://Upper/x", "bucket name"), ("s3://bucket/a//../b", "prefix"))
    for bad, says in bad_urls:
        with pytest.raises(ValueError, match=says):
            ServiceSettings(store=bad)
