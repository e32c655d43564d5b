"""The artifact store: safe formats, content-addressed names, whole objects or none, one-line
errors that name the store and never a credential. S3 is a real moto_server."""

from __future__ import annotations

import hashlib
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dioptra_runner.artifacts import (
    EXTENSIONS,
    LocalStore,
    StoreError,
    decode,
    encode,
    open_store,
    parse_artifact_uri,
)
from support.s3 import S3Server, start_moto_server


class _Touch:
    """Unpickling this creates a file: the proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize(
    ("value", "format_"),
    [
        ({"accuracy": 0.9, "labels": ["a", "b"], "ok": True, "none": None}, "json"),
        ([1, 2.5, "x"], "json"),
        (np.arange(6, dtype=np.float32).reshape(2, 3), "npy"),
        ((1, 2), "pickle"),  # a tuple would come back from JSON as a list
        (float("nan"), "pickle"),  # not JSON
        (np.array([{"a": 1}], dtype=object), "pickle"),  # .npy only without pickle
        ({1: "int key"}, "pickle"),
    ],
)
def test_each_value_is_stored_in_the_safest_format_that_gives_it_back(
    value: Any, format_: str
) -> None:
    encoded = encode(value)

    back = decode(encoded.data, encoded.format, encoded.sha256)

    assert encoded.format == format_
    digest = hashlib.sha256(encoded.data).hexdigest()
    assert encoded.name == f"objects/sha256/{digest}.{EXTENSIONS[format_]}"
    assert pickle.dumps(back) == pickle.dumps(value)  # the same value, nan and dtype included


def test_a_pickle_whose_bytes_do_not_match_its_digest_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    data = pickle.dumps(_Touch(str(marker)))

    with pytest.raises(ValueError, match="does not match the digest"):
        decode(data, "pickle", "0" * 64)

    assert not marker.exists()


def test_an_artifact_uri_must_name_its_digest_and_format() -> None:
    digest = "a" * 64
    ref = parse_artifact_uri(f"s3://art/runs/objects/sha256/{digest}.npy")

    assert (ref.location, ref.sha256, ref.format) == ("s3://art/runs", digest, "npy")
    with pytest.raises(ValueError, match="not an artifact URI"):
        parse_artifact_uri("s3://art/runs/objects/sha256/model.pkl")


def test_a_local_write_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    encoded = encode({"a": 1})
    (tmp_path / encoded.name).mkdir(
        parents=True
    )  # the final name is taken by a folder: the rename fails

    with pytest.raises(StoreError, match=f"artifact store {tmp_path.as_uri()}: cannot write"):
        store.write(encoded.name, encoded.data)

    folder = (tmp_path / encoded.name).parent
    assert [p.name for p in folder.iterdir()] == [encoded.name.rpartition("/")[2]]  # no temp
    assert (tmp_path / encoded.name).is_dir()  # what was there stays as it was


def test_a_local_store_gives_back_what_it_was_given(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/art")

    store.write("sha256-x.json", b"[1]")

    assert store.read("sha256-x.json") == b"[1]"
    assert store.read("sha256-missing.json") is None
    assert store.uri("sha256-x.json") == f"file://{tmp_path}/art/sha256-x.json"


def test_an_s3_store_writes_and_reads_whole_objects(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    store = open_store(f"s3://{s3_bucket}/runs", endpoint_url=s3_server.endpoint_url)

    store.write("sha256-x.json", b"[1, 2]")

    assert store.exists("sha256-x.json")
    assert store.read("sha256-x.json") == b"[1, 2]"
    assert store.read("sha256-none.json") is None
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="runs/sha256-x.json")["Body"]
    assert body.read() == b"[1, 2]"


def test_access_denied_names_the_store_and_never_the_credentials() -> None:
    server = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        environ = {
            "AWS_ACCESS_KEY_ID": "AKIDNOTKNOWN",
            "AWS_SECRET_ACCESS_KEY": "not-so-secret-value",
            "AWS_MAX_ATTEMPTS": "1",
        }
        store = open_store("s3://denied/runs", endpoint_url=server.endpoint_url, environ=environ)

        with pytest.raises(StoreError) as caught:
            store.write("sha256-x.json", b"[]")
    finally:
        server.stop()

    message = str(caught.value)
    assert message.startswith("artifact store s3://denied/runs: ")
    assert "InvalidAccessKeyId" in message or "denied" in message
    assert "not-so-secret-value" not in message and "AKIDNOTKNOWN" not in message


class _CuttingProxy:
    """Forwards a request's headers and half of its body to S3, then drops the connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as server:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length // 2:
                body += client.recv(65536)
            server.sendall(head + b"\r\n\r\n" + body[: length // 2])
            self.cut.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutting_proxy(s3_server: S3Server) -> Iterator[_CuttingProxy]:
    host, port = s3_server.endpoint_url.removeprefix("http://").split(":")
    proxy = _CuttingProxy((host, int(port)))
    yield proxy
    proxy.close()


def test_an_upload_cut_off_half_way_leaves_no_object_under_its_name(
    s3_server: S3Server,
    s3_bucket: str,
    s3_env: dict[str, str],
    cutting_proxy: _CuttingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    encoded = encode(np.zeros(200_000))
    store = open_store(f"s3://{s3_bucket}/runs", endpoint_url=cutting_proxy.url)

    with pytest.raises(StoreError, match=f"artifact store s3://{s3_bucket}/runs"):
        store.write(encoded.name, encoded.data)

    assert cutting_proxy.cut.is_set()
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="runs/")
    assert listed.get("KeyCount", 0) == 0
