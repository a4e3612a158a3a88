"""Connecting to Ray: an embedded local instance by default, the cluster in RAY_ADDRESS otherwise."""

from __future__ import annotations

import logging
import os
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
    # (on 127.0.0.1) stays on: Ray's state API needs it, and Ray Train's placement-group cleaner uses that
    # API to free the CPUs of a run whose controller was killed (e.g. a Tune trial stopped by ASHA).
    kwargs = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": num_cpus}
    ray.init(
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
        configure_logging=True,
        **kwargs,
    )
