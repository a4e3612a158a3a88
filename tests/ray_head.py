"""A real Ray head for the tests: the same start, environment and stop as ``make cluster-up`` / ``make cluster-down``
(:mod:`mnist_ray.head`), but on free ports and in its own temp dir, so it touches no other Ray on the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

from mnist_ray import head


def free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports on loopback."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class RayHead:
    """``mnist_ray.head.start_head`` with every port free and its state in a temp dir; ``stop()`` stops just it.

    ``tmp_root`` is a RAY_TMPDIR under which a ``ray.init()`` finds this head as "started by ray start on this
    machine" (its address file is ``<tmp_root>/ray/ray_current_cluster``).
    """

    def __init__(self, num_cpus: int = 2) -> None:
        gcs, dash, client, agent_http, agent_grpc, metrics, env_agent, nm, om = free_ports(9)
        self.tmp_root = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.temp_dir = str(self.tmp_root / "ray")
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.gcs = f"127.0.0.1:{gcs}"
        self.env = head.head_env(os.environ)  # what the head runs with; also the client side's environment here
        args = [
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={env_agent}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--num-cpus={num_cpus}",
        ]
        self.info = head.start_head(self.tmp_root, gcs, dash, args, temp_dir=self.temp_dir, timeout=90)
        self.log = self.tmp_root / "ray.log"

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this head (job submission goes through its dashboard)."""
        return subprocess.run(
            [str(head.BIN / "ray"), *args],
            env={**self.env, "RAY_ADDRESS": self.dashboard},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop the head's session only (``make cluster-down``'s code)."""
        head.stop_head(self.tmp_root)
