"""A 2-node ray.cluster_utils.Cluster and a 2-worker run on it (python -m tests.multinode_train DIR S3_URI).

Prints one JSON line: the run's output paths and the node of each Ray Train worker.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from mnist_ray.cluster import connection as ray_cluster  # noqa: E402
from mnist_ray.cluster import layout  # noqa: E402
from mnist_ray.errors import ConfigError, ResourceError  # noqa: E402
from mnist_ray.settings.config import RunOptions, TrainConfig  # noqa: E402
from mnist_ray.training import trainer
from tests.ray_head import free_ports  # noqa: E402


def main(output: str, bucket: str) -> None:
    port = free_ports(1)[0]  # the tests' own Ray session already holds the default dashboard port
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": port})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        auto = layout.Request(frozenset(layout.FIELDS))  # the train job's defaults: the layout left to the cluster
        tiny = TrainConfig(epochs=2, train_limit=1024, val_size=256, batch_size=64, augment=False)
        cfg, chosen = layout.resolve(tiny, auto)
        try:  # the default storage (the driver's local disk) is refused on a multi-node cluster
            trainer.train(cfg, RunOptions(name="nostorage", output=output))
            refused = ""
        except ConfigError as exc:
            refused = str(exc)
        try:  # predictions written by tasks of any node: a local --output is refused too
            ray_cluster.check_single_node("--output", output)
            refused_output = ""
        except ResourceError as exc:
            refused_output = str(exc)
        # Object storage every node reaches, as on a real cluster: each worker persists its own shard there.
        out = trainer.train(cfg, RunOptions(name="multinode", output=output, storage_path=bucket))
        workers = list_actors(
            address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100
        )
        cluster.add_node(num_cpus=1, num_gpus=1)  # a node that declares a GPU: auto's choice (nothing trains on it)
        cluster.wait_for_nodes()
        with_gpu = layout.resolve(tiny, layout.Request(frozenset(layout.FIELDS), frozenset(layout.GPU_RECIPE)))[1]
        print(
            json.dumps(
                {
                    "history": str(out.history),
                    "curves": str(out.curves),
                    "best": str(out.best_checkpoint),
                    "worker_nodes": sorted({w.node_id for w in workers}),
                    "refused_without_storage": refused,
                    "refused_local_output": refused_output,
                    "auto": chosen,
                    "auto_with_gpu": with_gpu,
                    "cluster_nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
                    "addresses": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
