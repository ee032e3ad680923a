"""Uploads: pickle refused unread, malformed safetensors and mismatches refused, size caps, no leftovers."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.main import create_app
from tests.app.support import KEY_B, TestClient, auth, make_settings, store_files
from workers.engine.io.architecture import parse_arch
from workers.engine.models.training import build_model
from workers.settings import ServiceSettings

ARCH = {"type": "mlp", "in_features": 3, "hidden": [2], "activation": "relu"}


def safetensors_bytes(shapes: dict[str, list[int]], header_extra: int = 0,
                      metadata: dict[str, str] | None = None) -> bytes:
    """A float32 safetensors file with zero-filled tensors of ``shapes``."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) + header_extra) + raw + b"\x00" * offset


GOOD = {"0.weight": [2, 3], "0.bias": [2], "2.weight": [1, 2], "2.bias": [1]}


def post_model(client: TestClient, content: bytes, name: str = "model.safetensors",
               arch: object = ARCH) -> tuple[int, dict[str, object]]:
    response = client.post("/v1/models", headers=auth(), data={"architecture": json.dumps(arch)},
                           files={"file": (name, content)})
    return response.status_code, response.json()


class Payload:
    """Unpickling this touches a sentinel file (it must never happen)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (f"{self.sentinel}", "w"))


def test_valid_checkpoint_is_stored_with_its_hash(client: TestClient, settings: ServiceSettings) -> None:
    import hashlib

    content = safetensors_bytes(GOOD)
    status, body = post_model(client, content, name="../../etc/passwd")
    assert status == 201, body
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["architecture"] == ARCH
    files = store_files(settings)
    assert f"t/acme/models/{body['id']}/model.safetensors" in files
    assert all(f.startswith("t/acme/models/") or f == "t/acme/index.json" for f in files), files
    assert client.get(f"/v1/models/{body['id']}", headers=auth()).json()["sha256"] == body["sha256"]


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_pickle_checkpoint_is_refused_unread(client: TestClient, settings: ServiceSettings,
                                             tmp_path: Path, name: str) -> None:
    sentinel = tmp_path / "pwned"
    for protocol in (2, 4):
        status, body = post_model(client, pickle.dumps({"w": Payload(sentinel)}, protocol=protocol), name)
        assert status == 415, body
        assert body["code"] == "pickle_refused"
    zipped = b"PK\x03\x04" + b"\x00" * 100
    status, body = post_model(client, zipped, name)
    assert (status, body["code"]) == (415, "pickle_refused")
    assert not sentinel.exists()
    assert store_files(settings) == []


def test_unknown_format_is_415(client: TestClient, settings: ServiceSettings) -> None:
    status, body = post_model(client, b"ONNX" + b"\x01" * 50, "model.onnx")
    assert (status, body["code"]) == (415, "unsupported_format")
    assert store_files(settings) == []


def test_truncated_and_lying_headers_are_422(client: TestClient, settings: ServiceSettings) -> None:
    good = safetensors_bytes(GOOD)
    truncated = good[:-5]
    lying = safetensors_bytes(GOOD, header_extra=10_000)
    for content in (truncated, lying):
        status, body = post_model(client, content)
        assert status == 422, body
        assert body["code"] == "invalid_safetensors"
        assert body["type"] == "urn:softunlearn:problem:invalid_safetensors"
    assert store_files(settings) == []


def test_shape_mismatch_with_architecture_is_422(client: TestClient, settings: ServiceSettings) -> None:
    status, body = post_model(client, safetensors_bytes({**GOOD, "0.weight": [2, 4]}))
    assert (status, body["code"]) == (422, "architecture_mismatch")
    assert "0.weight" in str(body["detail"])
    status, body = post_model(client, safetensors_bytes(GOOD), arch={"type": "cnn"})
    assert status == 422 and body["errors"][0]["field"] == "architecture"  # type: ignore[index]
    assert store_files(settings) == []


def test_a_cnn_checkpoint_is_accepted_with_its_architecture(client: TestClient) -> None:
    arch = {"type": "cnn", "input_shape": [1, 8, 8],
            "blocks": [{"out_channels": 2, "kernel_size": 3, "padding": 1, "pool": "max", "pool_size": 2}],
            "hidden": [4], "activation": "relu"}
    shapes = {"0.weight": [2, 1, 3, 3], "0.bias": [2], "4.weight": [4, 32], "4.bias": [4],
              "6.weight": [1, 4], "6.bias": [1]}
    status, body = post_model(client, safetensors_bytes(shapes), arch=arch)
    assert status == 201, body
    assert body["architecture"] == arch
    status, body = post_model(client, safetensors_bytes({**shapes, "0.weight": [2, 1, 5, 5]}), arch=arch)
    assert (status, body["code"]) == (422, "architecture_mismatch")


def test_a_torchvision_keyed_resnet_checkpoint_is_accepted(client: TestClient, tmp_path: Path) -> None:
    arch = {"type": "resnet", "depth": 18, "input_shape": [3, 32, 32], "small_input": True, "base_width": 4}
    model = build_model(parse_arch(arch))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "r.safetensors"))
    raw = (tmp_path / "r.safetensors").read_bytes()
    status, body = post_model(client, raw, arch=arch)
    assert status == 201, body
    assert body["architecture"] == arch
    status, body = post_model(client, raw, arch={**arch, "small_input": False})
    assert (status, body["code"]) == (422, "architecture_mismatch")
    assert "conv1.weight" in str(body["detail"])


def test_a_checkpoint_recording_another_architecture_is_422(client: TestClient,
                                                             settings: ServiceSettings) -> None:
    recorded = {"softunlearn": json.dumps({"architecture": {**ARCH, "activation": "tanh"},
                                           "feature_names": ["a", "b", "c"]})}
    status, body = post_model(client, safetensors_bytes(GOOD, metadata=recorded))
    assert (status, body["code"]) == (422, "architecture_mismatch")
    assert "'tanh'" in str(body["detail"]) and "'relu'" in str(body["detail"])
    assert store_files(settings) == []
    recorded_same = {"softunlearn": json.dumps({"architecture": ARCH})}
    assert post_model(client, safetensors_bytes(GOOD, metadata=recorded_same))[0] == 201


def test_over_the_size_cap_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "store", "capped", max_model_bytes=1000, max_dataset_bytes=1000)
    with TestClient(create_app(settings, reconcile=False)) as client:
        big = safetensors_bytes({"0.weight": [20, 30]})
        status, body = post_model(client, big)
        assert (status, body["code"]) == (413, "upload_too_large")

        def chunks() -> object:  # no Content-Length: the streaming cap must catch it
            boundary = b"xyzzy"
            yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n\r\n'
            for _ in range(100):
                yield b"\x00" * 100
            yield b"\r\n--" + boundary + b"--\r\n"

        response = client.post("/v1/models", headers={**auth(), "Content-Type":
                               "multipart/form-data; boundary=xyzzy"}, content=chunks())  # type: ignore[arg-type, unused-ignore]
        assert response.status_code == 413
    assert store_files(settings) == []


def test_dataset_upload_csv_and_refusals(client: TestClient, settings: ServiceSettings) -> None:
    csv = b"x1,x2,sex,y\n0.1,1.0,F,0\n0.3,0.5,M,1\n0.2,0.1,F,1\n"
    ok = client.post("/v1/datasets", headers=auth(), data={"schema": '{"label": "y", "sensitive": ["sex"]}'},
                     files={"file": ("d.csv", csv)})
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert (body["format"], body["n_rows"], body["feature_names"]) == ("csv", 3, ["x1", "x2"])
    assert body["groups"] == {"sex": ["F", "M"]} and body["schema"]["label"] == "y"
    before = store_files(settings)
    missing = client.post("/v1/datasets", headers=auth(), files={"file": ("d.csv", csv)},
                          data={"schema": '{"label": "z", "sensitive": ["sex"]}'})
    assert (missing.status_code, missing.json()["code"]) == (422, "invalid_dataset")
    binary = client.post("/v1/datasets", headers=auth(), files={"file": ("d.pkl", pickle.dumps([1, 2]))},
                         data={"schema": '{"label": "y", "sensitive": ["sex"]}'})
    assert binary.status_code == 415
    no_schema = client.post("/v1/datasets", headers=auth(), files={"file": ("d.csv", csv)})
    assert no_schema.status_code == 422 and no_schema.json()["errors"][0]["field"] == "schema"
    not_multipart = client.post("/v1/datasets", headers=auth(), content=csv)
    assert not_multipart.status_code == 415
    assert store_files(settings) == before


def test_tensor_dataset_upload_and_refusals(client: TestClient, settings: ServiceSettings) -> None:
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"x": np.ascontiguousarray(rng.normal(size=(20, 3)).astype(np.float32)),
               "y": rng.integers(0, 2, 20).astype(np.int64), "sex": rng.integers(0, 2, 20).astype(np.int64)}
    metadata = {"softunlearn.dataset": json.dumps({"feature_names": ["a", "b", "c"],
                                                   "groups": {"sex": ["F", "M"]}})}
    schema = {"schema": '{"label": "y", "sensitive": ["sex"]}'}
    ok = client.post("/v1/datasets", headers=auth(), data=schema,
                     files={"file": ("d.safetensors", save(tensors, metadata=metadata))})
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert (body["format"], body["n_rows"], body["feature_names"]) == ("safetensors", 20, ["a", "b", "c"])
    assert body["groups"] == {"sex": ["F", "M"]}
    assert any(f.endswith("/data.safetensors") for f in store_files(settings))
    before = store_files(settings)
    bad_label = client.post("/v1/datasets", headers=auth(), data=schema,
                            files={"file": ("d.safetensors", save({**tensors, "y": tensors["y"] + 5}))})
    assert (bad_label.status_code, bad_label.json()["code"]) == (422, "invalid_dataset")
    assert "only 0 and 1" in bad_label.json()["detail"]
    no_x = client.post("/v1/datasets", headers=auth(), data=schema,
                       files={"file": ("d.safetensors", save({"y": tensors["y"], "sex": tensors["sex"]}))})
    assert no_x.status_code == 422 and "'x'" in no_x.json()["detail"]
    assert store_files(settings) == before


DEEP = "[" * 5000 + "]" * 5000
"""JSON nested far deeper than ``json.loads`` can recurse."""


def test_deeply_nested_json_in_any_field_is_422_never_500(client: TestClient,
                                                          settings: ServiceSettings) -> None:
    response = client.post("/v1/models", headers=auth(), data={"architecture": DEEP},
                           files={"file": ("model.safetensors", safetensors_bytes(GOOD))})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "architecture"
    deep_header = b'{"a":' + DEEP.encode() + b"}"
    checkpoint = struct.pack("<Q", len(deep_header)) + deep_header
    response = client.post("/v1/models", headers=auth(), data={"architecture": json.dumps(ARCH)},
                           files={"file": ("m.safetensors", checkpoint)})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_safetensors"), response.text
    csv = b"x1,sex,y\n0.1,F,0\n0.3,M,1\n"
    response = client.post("/v1/datasets", headers=auth(), data={"schema": DEEP},
                           files={"file": ("d.csv", csv)})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "schema" and "nested" in response.json()["detail"]
    assert store_files(settings) == []


def _dataset(client: TestClient, content: bytes, name: str = "d.csv") -> tuple[int, dict[str, object]]:
    schema = '{"label": "y", "sensitive": ["s"]}'
    response = client.post("/v1/datasets", headers=auth(), data={"schema": schema},
                           files={"file": (name, content)})
    return response.status_code, response.json()


def test_datasets_over_the_caps_are_413_naming_the_setting(tmp_path: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = make_settings(tmp_path / "store", "dcaps", max_dataset_rows=100, max_dataset_columns=4,
                             max_dataset_decoded_bytes=50 * 3 * 8)
    table = pa.table({"x": [0.5] * 101, "s": [0, 1] * 50 + [0], "y": [1] * 101})
    rows = io.BytesIO()
    pq.write_table(table, rows)
    wide = b"a,b,c,d,s,y\n" + b"1,2,3,4,0,1\n"
    tall_csv = b"x,s,y\n" + b"0.5,0,1\n" * 51
    with TestClient(create_app(settings, reconcile=False)) as client:
        for content, name, measured, setting in (
            (rows.getvalue(), "d.parquet", "101 rows", "SOFTUNLEARN_MAX_DATASET_ROWS"),
            (wide, "d.csv", "6 columns", "SOFTUNLEARN_MAX_DATASET_COLUMNS"),
            (tall_csv, "d.csv", "1,224 bytes once decoded", "SOFTUNLEARN_MAX_DATASET_DECODED_BYTES"),
        ):
            status, body = _dataset(client, content, name)
            assert (status, body["code"]) == (413, "dataset_too_large"), body
            assert measured in str(body["detail"]) and setting in str(body["detail"]), body
            message = str(body["detail"]).removeprefix("file: ")
            assert body["errors"] == [{"field": "file", "message": message}]
        assert _dataset(client, b"x,s,y\n" + b"0.5,0,1\n0.5,1,0\n" * 25)[0] == 201
    assert all("/datasets/" in f or f.endswith("/index.json") for f in store_files(settings))
    assert len([f for f in store_files(settings) if f.endswith("/data.csv")]) == 1


def test_a_csv_header_line_over_a_mebibyte_is_413(client: TestClient, settings: ServiceSettings) -> None:
    status, body = _dataset(client, b"x" * (1024 * 1024 + 1) + b",s,y\n1,0,1\n")
    assert (status, body["code"]) == (413, "dataset_too_large") and "header line" in str(body["detail"])
    assert store_files(settings) == []


def _state(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(*shape, dtype=dtype) for k, shape in GOOD.items()}


def _raw(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return bytes(save(state))


def test_non_finite_weights_are_422_naming_the_tensor(client: TestClient, settings: ServiceSettings) -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        state = _state(dtype)
        state["0.weight"][0, :2] = float("nan")
        state["2.bias"][0] = float("-inf")
        status, body = post_model(client, _raw(state))
        assert (status, body["code"]) == (422, "non_finite_weights"), (dtype, body)
        assert "2 NaN or Inf value(s) of 6" in str(body["detail"]) or "1 NaN or Inf value(s) of 1" in str(
            body["detail"]), body
        assert "'0.weight'" in str(body["detail"]) or "'2.bias'" in str(body["detail"])
        assert body["errors"][0]["field"] == "file"  # type: ignore[index]
    assert store_files(settings) == []
    assert post_model(client, _raw(_state(torch.bfloat16)))[0] == 201


def test_mixed_dtypes_are_422_naming_them(client: TestClient, settings: ServiceSettings) -> None:
    state = _state()
    state["0.bias"] = torch.zeros(2, dtype=torch.float16)
    status, body = post_model(client, _raw(state))
    assert (status, body["code"]) == (422, "mixed_dtypes"), body
    assert "F16 (1 tensor), F32 (3 tensors)" in str(body["detail"])
    assert store_files(settings) == []


def test_upload_checks_run_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import app.services.artifacts as service

    seen: list[bool] = []

    def off_loop(original: object) -> object:
        def wrapper(*args: object) -> object:
            try:
                asyncio.get_running_loop()
                seen.append(False)
            except RuntimeError:
                seen.append(True)
            return original(*args)  # type: ignore[operator]
        return wrapper

    monkeypatch.setattr(service, "_check_checkpoint", off_loop(service._check_checkpoint))
    monkeypatch.setattr(service, "_inspect_dataset", off_loop(service._inspect_dataset))
    assert post_model(client, safetensors_bytes(GOOD))[0] == 201
    assert _dataset(client, b"x,s,y\n0.5,0,1\n0.5,1,0\n")[0] == 201
    assert seen == [True, True]


def test_an_earlier_upload_is_found_by_its_sha256(client: TestClient) -> None:
    import hashlib

    content = safetensors_bytes(GOOD)
    digest = hashlib.sha256(content).hexdigest()
    first_id = str(post_model(client, content)[1]["id"])
    second_id = str(post_model(client, content)[1]["id"])
    post_model(client, safetensors_bytes(GOOD, metadata={"note": "other bytes"}))
    response = client.get("/v1/models", headers=auth(), params={"sha256": digest})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == 2 and page["next_offset"] is None
    assert sorted(item["id"] for item in page["items"]) == sorted([first_id, second_id])
    assert all(item["sha256"] == digest and item["architecture"] == ARCH for item in page["items"])
    assert client.get("/v1/models", headers=auth(), params={"limit": 2}).json()["next_offset"] == 2
    assert client.get("/v1/models", headers=auth(KEY_B),
                      params={"sha256": digest}).json()["total"] == 0
    assert client.get("/v1/datasets", headers=auth(), params={"sha256": digest}).json()["items"] == []
    bad = client.get("/v1/models", headers=auth(), params={"sha256": "ZZ" * 32})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
