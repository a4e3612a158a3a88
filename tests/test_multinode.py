"""Two Ray nodes on one machine (ray.cluster_utils.Cluster): the auto layout puts a worker on each, same outputs;
a third node that declares a GPU turns auto to the GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from mnist_ray.files import storage
from tests.conftest import REPO
from tests.s3 import make_bucket

pytestmark = pytest.mark.slow


def test_two_workers_on_two_nodes_with_checkpoints_on_s3(tmp_path, s3_server):
    bucket = make_bucket("multinode") + "/ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "tests.multinode_train", str(tmp_path), bucket],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["auto"] == "auto: 2 workers x 1 CPU (2 nodes, no GPU)"  # the default layout: one worker per node
    assert len(info["cluster_nodes"]) == 3 and len(info["worker_nodes"]) == 2
    assert set(info["worker_nodes"]) < set(info["cluster_nodes"])  # the GPU node joined after the run
    assert info["auto_with_gpu"] == "auto: 1 worker x 1 CPU + 1 GPU (3 nodes, 1 GPU; gpu preset's batch, lr and epochs)"
    assert info["addresses"] == ["127.0.0.1"]  # every node on loopback
    assert "this Ray cluster has 2 nodes: put the run on storage every node reaches" in info["refused_without_storage"]
    assert f"2 nodes: --output {tmp_path} is on one machine's disk; pass an s3://" in info["refused_local_output"]
    history = pd.read_parquet(info["history"])
    assert history["epoch"].tolist() == [1, 2] and history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    assert (tmp_path / "multinode" / "curves.png").is_file() and (tmp_path / "multinode" / "config.json").is_file()
    assert storage.list_dirs(f"{bucket}/multinode")[:2] == ["checkpoint_epoch_001", "checkpoint_epoch_002"]
    assert storage.is_file(f"{bucket}/multinode/checkpoint_epoch_002/model.pt")
