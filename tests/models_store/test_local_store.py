"""LocalStore: atomic writes, byte caps with nothing left behind, key containment, locking."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from models_store import InvalidKey, LocalStore, NotFound, TooLarge
from models_store.keys import new_id, object_key


def files(root: Path) -> list[str]:
    found = (p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts)
    return sorted(str(p.relative_to(root)) for p in found)


def test_put_get_and_hash(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = object_key("acme", "models", new_id(), "model.safetensors")
    with store.stage(100) as staged:
        staged.write(b"abc")
        assert staged.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        staged.commit(key)
    assert store.get_bytes(key) == b"abc" and store.size(key) == 3
    assert b"".join(store.open_chunks(key, 2)) == b"abc"
    with pytest.raises(NotFound):
        store.get_bytes(object_key("acme", "models", new_id(), "model.safetensors"))


def test_cap_and_abandoned_stage_leave_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(TooLarge), store.stage(4) as staged:
        staged.write(b"abc")
        staged.write(b"de")
    with pytest.raises(RuntimeError), store.stage() as staged:
        staged.write(b"partial")
        raise RuntimeError("crash before commit")
    assert files(tmp_path) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "t/a/../../x", "t//x", ".tmp/x", "T/UPPER", ""])
def test_keys_outside_the_grammar_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKey):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_key_builders_refuse_user_input() -> None:
    with pytest.raises(ValueError):
        object_key("acme", "models", "../../x", "model.safetensors")
    with pytest.raises(ValueError):
        object_key("Acme Corp", "models", new_id(), "model.safetensors")


def test_create_exclusive_and_update_under_lock(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.create_exclusive("t/a/idempotency/x", b"1")
    assert not store.create_exclusive("t/a/idempotency/x", b"2")
    assert store.get_bytes("t/a/idempotency/x") == b"1"

    def bump(current: bytes | None) -> bytes:
        return str(int(current or b"0") + 1).encode()

    threads = [threading.Thread(target=lambda: [store.update("t/a/counter", bump) for _ in range(25)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_bytes("t/a/counter") == b"100"


def test_publish_dir_replaces_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "out"
    source.mkdir()
    (source / "report.json").write_text("{}")
    store.publish_dir("t/a/jobs/j/output", source)
    (source / "report.json").write_text('{"v": 2}')
    store.publish_dir("t/a/jobs/j/output", source)
    assert store.get_bytes("t/a/jobs/j/output/report.json") == b'{"v": 2}'
    assert store.list_children("t/a/jobs/j/output") == ["report.json"]
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []


_STAGE_AND_DIE = """
import os, sys
from models_store import LocalStore
store = LocalStore(sys.argv[1])
context = store.stage()
staged = context.__enter__()
staged.write(b"half an upload")
staged.path
os._exit(0)  # no cleanup, as after SIGKILL
"""


def test_garbage_collection_removes_dead_owners_staging_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _STAGE_AND_DIE, str(tmp_path)], check=True)
    store = LocalStore(tmp_path)
    [dead] = list(store.tmp_dir.iterdir())
    with store.stage() as live:
        live.write(b"in progress")
        assert store.collect_garbage() == 1
        assert [p.name for p in store.tmp_dir.iterdir()] == [live.path.name]
    assert not dead.exists()
