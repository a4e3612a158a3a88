"""Connecting to Ray: an embedded local instance by default, the cluster in RAY_ADDRESS otherwise."""

from __future__ import annotations

import logging
import os
import socket
import warnings

import ray


def connect(num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start or join Ray once; quiet by default so the job's own progress lines stay readable.

    Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) this joins that cluster; otherwise it
    starts a local Ray with ``num_cpus`` CPUs (all of this machine's by default).
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's status tables; our callbacks print instead
    # num_cpus only applies to a new local instance; joining an existing cluster rejects it. The dashboard
    # (on 127.0.0.1) must come up: Ray's state API needs it, and Ray Train's placement-group cleaner uses that
    # API to free the CPUs of a run whose controller was killed (e.g. a Tune trial stopped by ASHA); without
    # it those CPUs leak and later trials wait forever. So a local instance takes a free port, not a busy 8265.
    kwargs = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": num_cpus, "dashboard_port": _free_port()}
    ray.init(
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
        configure_logging=True,
        **kwargs,
    )


def _free_port() -> int:
    """A TCP port on loopback that is free right now (8265 when available)."""
    for port in (8265, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise OSError("no free port for the Ray dashboard")
