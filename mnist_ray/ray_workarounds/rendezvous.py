"""Torch's DDP rendezvous on loopback when the Ray node is on loopback.

Ray Train's torch backend starts torch's ``TCPStore`` on rank 0 for the workers to meet, and a ``TCPStore``
listens on every interface whatever host it is given: on a one-machine run that is the only port left
reachable from the network (Ray's own ports follow the node address, which :mod:`.loopback_node` puts on
127.0.0.1 for a local instance). Ray's token authentication does not cover torch's store. So when rank 0's
node address is a loopback address, rank 0 binds the store's socket to that address itself and hands it
to ``TCPStore`` (``master_listen_fd``), and gloo's own sockets use the loopback interface. On a real cluster
(a routable node address) Ray's backend runs unchanged.

Everything but the store is Ray 2.60's own setup, through two private names of ``ray.train.torch.config``:
``_TorchBackend`` (subclassed; its ``on_start(worker_group, backend_config)`` replaced) and
``_set_torch_distributed_env_vars``. If either moves or changes its signature,
``tests/test_ray_boundary.py::test_private_ray_names_still_exist[rendezvous]`` fails at once; a port of a local run
off loopback fails ``tests/test_faults.py::test_killed_train_driver_resumes_with_the_same_command``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_STORE: dist.TCPStore | None = None
"""Rank 0's store; it must outlive the process group's setup, so the worker process keeps it."""
LOOPBACK_INTERFACE = "lo"


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous stays on loopback when the Ray node does."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        host = worker_group.execute_single(0, ray.util.get_node_ip_address)
        if not ipaddress.ip_address(host).is_loopback:
            super().on_start(worker_group, backend_config)
            return
        size, timeout_s = len(worker_group), backend_config.timeout_s
        port = worker_group.execute_single(0, _open_store, host=host, world_size=size, timeout_s=timeout_s)
        worker_group.execute(_set_torch_distributed_env_vars)
        backend = backend_config.backend or _default_backend(worker_group)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _join,
                    backend=backend,
                    host=host,
                    port=port,
                    world_rank=rank,
                    world_size=size,
                    timeout_s=timeout_s,
                )
                for rank in range(size)
            ]
        )


def _default_backend(worker_group) -> str:
    """Ray's own choice: nccl for GPU workers, gloo otherwise."""
    return "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"


def _open_store(host: str, world_size: int, timeout_s: int) -> int:
    """On rank 0: bind a socket to ``host`` (loopback) and serve the torch store on it; returns its port."""
    global _STORE
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    _STORE = dist.TCPStore(
        host,
        port,
        world_size,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.detach(),  # the store owns the socket from here on
    )
    return port


def _join(backend: str, host: str, port: int, world_rank: int, world_size: int, timeout_s: int) -> None:
    """On every rank: join the process group through the loopback store, gloo on the loopback interface."""
    timeout = datetime.timedelta(seconds=timeout_s)
    os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port))
    if _has_interface(LOOPBACK_INTERFACE):  # gloo's and NCCL's bootstrap sockets, like the store, on loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # as Ray's backend: fail on a stuck collective
    store = _STORE if world_rank == 0 else dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


def _has_interface(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False
