"""A real S3 API for the tests: one moto server on 127.0.0.1, reached through the standard AWS environment.

``s3_server`` (a session fixture; conftest may import it) starts the server once and exports
``AWS_ENDPOINT_URL`` and test credentials into ``os.environ`` before anything resolves a filesystem, so code
under test and Ray workers started later reach it exactly as they would reach S3 or MinIO.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest

# What the server exports; the keys that would take precedence over it are removed while it runs.
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SHADOWING = ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint URL."""

    endpoint: str


_running: dict = {}  # "server": ThreadedMotoServer, "saved": the environment it replaced, "info": S3Server


def start() -> S3Server:
    """Start the moto server once per process and point the AWS environment at it; idempotent."""
    if "info" in _running:
        return _running["info"]
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    info = S3Server(endpoint=f"http://{host}:{port}")
    env = {**ENV, "AWS_ENDPOINT_URL": info.endpoint}
    _running.update(server=server, info=info, saved={k: os.environ.get(k) for k in (*env, *SHADOWING)})
    for key in SHADOWING:
        os.environ.pop(key, None)
    os.environ.update(env)
    return info


def stop() -> None:
    """Stop the server and restore the environment it replaced; idempotent."""
    if "info" not in _running:
        return
    _running.pop("server").stop()
    for key, value in _running.pop("saved").items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _running.pop("info")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The session's moto S3 server, with the AWS environment pointing at it."""
    yield start()
    stop()


def make_bucket(name: str) -> str:
    """Create the bucket ``name`` on the running server (if missing); returns ``s3://name``."""
    fs = pafs.S3FileSystem(endpoint_override=start().endpoint, allow_bucket_creation=True)
    if fs.get_file_info(name).type == pafs.FileType.NotFound:
        fs.create_dir(name)
    return f"s3://{name}"


@contextmanager
def refusing_credentials() -> Iterator[None]:
    """While inside, the server checks signatures against its (empty) IAM and refuses every key."""
    from moto.core import enable_iam_authentication

    with enable_iam_authentication():
        yield
