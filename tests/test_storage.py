"""mnist_ray.files storage, publishing and capacity on local paths and on a real S3 API (moto on loopback): no Ray."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from mnist_ray.files import capacity, publishing, storage
from mnist_ray.files.publishing import MANIFEST
from mnist_ray.files.storage import StorageError
from tests import s3

s3_server = s3.s3_server  # the session fixture, registered for this module (conftest may import it too)


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    """``s3://`` URI of a bucket on the session's moto server."""
    return s3.make_bucket("mnist-ray-test")


@pytest.fixture
def prefix(bucket) -> str:
    """A fresh prefix per test, so no test sees another's objects."""
    return f"{bucket}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A local folder to publish: two files, one in a subfolder."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "metrics.parquet").write_bytes(b"m" * 100)
    (src / "sub" / "summary.md").write_text("# report\n")
    return src


def one_line_error(call, *args) -> str:
    """Run ``call(*args)``; it must raise a one-line StorageError within 10 s. Returns the message."""
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        call(*args)
    assert time.monotonic() - start < 10, "storage errors must fail fast"
    message = str(info.value)
    assert "\n" not in message
    return message


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- paths ----------------------------------------------------------------------------------------------------


def test_paths_and_uris():
    assert storage.is_uri("s3://b/x") and storage.is_uri("gs://b") and not storage.is_uri("/tmp/x")
    assert storage.normalize("s3://b/runs/") == "s3://b/runs"
    assert storage.normalize("~/runs") == str(Path.home().resolve() / "runs")
    assert storage.normalize("file:///tmp/a/../b") == str(Path("/tmp/b").resolve())
    assert storage.join("s3://b/runs/", "r1", "/model.pt") == "s3://b/runs/r1/model.pt"
    assert storage.join("/tmp/runs", "r1", "model.pt") == "/tmp/runs/r1/model.pt"
    fs, path = storage.filesystem("gs://bucket/a/b")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/a/b"


@pytest.mark.parametrize("uri", ["s3://", "s3:/bucket/runs", "nosuch://bucket/runs", "s3://bucket/runs?region=x"])
def test_malformed_uris_are_refused(uri):
    message = one_line_error(capacity.check_writable, uri, "--output")
    assert message.startswith(f"--output {uri}")


# -- local paths: as before ------------------------------------------------------------------------------------


def test_local_round_trip(tmp_path):
    path = storage.write_text(str(tmp_path / "a" / "config.json"), "{}")
    assert path == str(tmp_path / "a" / "config.json") and storage.read_text(path) == "{}"
    storage.write_bytes(path, b"\x00\x01")
    assert storage.read_bytes(path) == b"\x00\x01" and storage.is_file(path)
    assert storage.exists(str(tmp_path / "a")) and not storage.is_file(str(tmp_path / "a"))
    assert abs(storage.mtime(path) - Path(path).stat().st_mtime) < 1e-3 and storage.mtime(path + ".x") is None
    assert storage.list_dirs(str(tmp_path)) == ["a"] and storage.list_dirs(str(tmp_path / "none")) == []
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json"]  # no temp files left
    with storage.local_copy(path) as local:
        assert local == Path(path)


def test_local_write_is_atomic(tmp_path):
    path = storage.write_text(str(tmp_path / "config.json"), "old")
    with pytest.raises(TypeError):
        storage.write_bytes(path, "not bytes")  # fails after the temp file was created
    assert storage.read_text(path) == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_local_publish_dir(tmp_path, folder):
    dest = publishing.publish_dir(folder, str(tmp_path / "reports" / "r1"))
    assert publishing.is_complete(dest)
    manifest = json.loads(Path(dest, MANIFEST).read_text())
    assert manifest["files"] == {"metrics.parquet": 100, "sub/summary.md": 9} and manifest["written_at"]
    assert "--overwrite" in one_line_error(publishing.publish_dir, folder, dest)
    (folder / "metrics.parquet").unlink()
    publishing.publish_dir(folder, dest, overwrite=True)
    assert sorted(p.name for p in Path(dest).rglob("*")) == [MANIFEST, "sub", "summary.md"]
    assert publishing.is_complete(dest) and [p.name for p in (tmp_path / "reports").iterdir()] == ["r1"]


def test_local_interrupted_publish_leaves_nothing(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(publishing, "_manifest", lambda files: 1 / 0)  # dies after copying the files
    with pytest.raises(ZeroDivisionError):
        publishing.publish_dir(folder, str(tmp_path / "reports" / "r1"))
    assert list((tmp_path / "reports").iterdir()) == [] and not publishing.is_complete(str(tmp_path / "reports" / "r1"))


def test_local_check_writable(tmp_path):
    assert capacity.check_writable(str(tmp_path / "new" / "runs"), "--output") == str(tmp_path / "new" / "runs")
    assert list((tmp_path / "new" / "runs").iterdir()) == []
    (tmp_path / "file").write_text("")
    message = one_line_error(capacity.check_writable, str(tmp_path / "file" / "runs"), "--reports")
    assert message.startswith(f"--reports {tmp_path / 'file' / 'runs'}: cannot write") and "--reports" in message


# -- S3 (moto) -------------------------------------------------------------------------------------------------


def test_s3_round_trip(prefix):
    path = storage.join(prefix, "r1", "config.json")
    assert storage.write_text(path, '{"lr": 0.1}') == path and storage.read_text(path) == '{"lr": 0.1}'
    storage.write_bytes(storage.join(prefix, "r2", "x.bin"), b"\x00" * 10)
    assert storage.exists(path) and storage.is_file(path) and not storage.is_file(storage.join(prefix, "r1"))
    assert storage.list_dirs(prefix) == ["r1", "r2"] and storage.list_dirs(storage.join(prefix, "none")) == []
    assert abs(storage.mtime(path) - time.time()) < 60 and storage.mtime(storage.join(prefix, "none")) is None
    assert "does not exist" in one_line_error(storage.read_bytes, storage.join(prefix, "none"))


def test_pyarrow_from_uri_honours_aws_endpoint_url(prefix):
    """Ray Train resolves ``storage_path`` with ``FileSystem.from_uri``: it must reach the same endpoint."""
    storage.write_text(storage.join(prefix, "a.txt"), "hi")
    fs, path = pafs.FileSystem.from_uri(storage.join(prefix, "a.txt"))
    assert fs.open_input_stream(path).read() == b"hi"


def test_s3_upload_download_local_copy(prefix, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"w" * 1000)
    uri = storage.upload_file(tmp_path / "model.pt", storage.join(prefix, "model.pt"))
    assert storage.download_file(uri, tmp_path / "back" / "model.pt").read_bytes() == b"w" * 1000
    with storage.local_copy(uri) as local:
        assert local.read_bytes() == b"w" * 1000 and local.name == "model.pt"
    assert not local.exists()


def test_s3_publish_dir(prefix, folder):
    dest = publishing.publish_dir(folder, storage.join(prefix, "r1"))
    storage.write_text(storage.join(prefix, "r10", "keep.txt"), "a sibling sharing the name's start")
    assert publishing.is_complete(dest) and storage.read_text(storage.join(dest, "sub", "summary.md")) == "# report\n"
    assert json.loads(storage.read_text(storage.join(dest, MANIFEST)))["files"]["metrics.parquet"] == 100
    assert "--overwrite" in one_line_error(publishing.publish_dir, folder, dest)
    (folder / "metrics.parquet").unlink()
    publishing.publish_dir(folder, dest, overwrite=True)
    assert publishing.is_complete(dest) and not storage.exists(storage.join(dest, "metrics.parquet"))
    assert storage.exists(storage.join(prefix, "r10", "keep.txt"))


@pytest.mark.parametrize("dies", ["in the manifest", "in the second upload"])
def test_s3_interrupted_publish_is_not_complete(prefix, folder, monkeypatch, dies):
    dest, upload, uploads = storage.join(prefix, "r1"), storage.upload_file, []

    def first_upload_only(local, to):
        uploads.append(to)
        return upload(local, to) if len(uploads) == 1 else 1 / 0

    if dies == "in the manifest":
        monkeypatch.setattr(publishing, "_manifest", lambda files: 1 / 0)
    else:
        monkeypatch.setattr(storage, "upload_file", first_upload_only)
    with pytest.raises(ZeroDivisionError):
        publishing.publish_dir(folder, dest)
    assert storage.exists(dest) and not publishing.is_complete(dest)  # objects are there, the manifest is not
    monkeypatch.undo()
    publishing.publish_dir(folder, dest)  # a half-written folder is no obstacle to publishing it again
    assert publishing.is_complete(dest)


def test_s3_manifest_lists_a_missing_file(prefix, folder):
    dest = publishing.publish_dir(folder, storage.join(prefix, "r1"))
    fs, path = storage.filesystem(storage.join(dest, "metrics.parquet"))
    fs.delete_file(path)
    assert not publishing.is_complete(dest)


def test_s3_check_writable(prefix):
    assert capacity.check_writable(prefix + "/runs/", "--output") == prefix + "/runs"
    fs, path = storage.filesystem(prefix)
    left = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert [(i.base_name, i.type) for i in left] == [("runs", pafs.FileType.Directory)]  # like mkdir -p; no probe


def test_s3_missing_bucket(s3_server):
    message = one_line_error(capacity.check_writable, "s3://nobucket-mnist/runs", "--output")
    assert message == (
        "--output s3://nobucket-mnist/runs: bucket nobucket-mnist does not exist (create it, or pass another bucket)"
    )


def test_s3_refused_credentials(prefix):
    with s3.refusing_credentials():
        message = one_line_error(capacity.check_writable, prefix, "--reports")
    assert message.startswith(f"--reports {prefix}: access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")


def test_s3_unreachable_endpoint(prefix, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    message = one_line_error(capacity.check_writable, prefix, "--output")
    assert message.startswith(f"--output {prefix}: cannot reach {endpoint}") and "AWS_ENDPOINT_URL" in message


def test_a_published_folder_is_readable_by_others(tmp_path):
    """Reports, predictions and exports are shared: the 0700 of the temp folder they were built in is not kept."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as built:
        (Path(built) / "metrics.parquet").write_bytes(b"x")
        publishing.publish_dir(Path(built), str(tmp_path / "report"))
    assert (tmp_path / "report").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "report" / "metrics.parquet").stat().st_mode & 0o044 == 0o044
