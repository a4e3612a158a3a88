"""Which Ray a job uses: resolved before ``ray.init``, checked, and printed as one line.

A job joins the cluster in ``RAY_ADDRESS`` when it is set (``ray job submit`` sets it for the driver); else the head
that ``ray start`` recorded in Ray's address file on this machine, if that file exists; else it starts a local Ray.
An address that no Ray answers fails at once instead of ``ray.init`` retrying for minutes.

What this relies on of Ray's private APIs or works around in Ray's behaviour is in :mod:`mnist_ray.ray_workarounds`,
one module each, called from :func:`connect`.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray

from mnist_ray.cluster import gcs_probe, stop
from mnist_ray.errors import ResourceError
from mnist_ray.ray_workarounds import address_file, autoscaling_coordinator, loggers, loopback_node, output
from mnist_ray.ray_workarounds.local_start import free_port, one_local_start_at_a_time
from mnist_ray.ray_workarounds.own_address import own_address_for_ray_processes

LOOPBACK = "127.0.0.1"
GCS_PORT, DASHBOARD_PORT = 6379, 8265
PROBE_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = "0.1"
"""Seconds between Train V2's polls of its workers (Ray's default: 2.0)."""


@dataclass(frozen=True)
class Target:
    """Where ``ray.init`` will go: ``address`` None means a new local instance; ``source`` says why."""

    address: str | None
    source: str


def resolve() -> Target:
    """Apply Ray's rule without connecting: RAY_ADDRESS, else the address file of ``ray start``, else local."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return Target(None, "RAY_ADDRESS=local")
    if env and env != "auto":
        by_job_server = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set for a driver started by the job server
        return Target(env, "RAY_ADDRESS, set by ray job submit" if by_job_server else "RAY_ADDRESS")
    file = address_file.path()
    recorded = file.read_text().strip() if file.is_file() else ""
    if recorded:
        return Target(recorded, f"the head started by ray start on this machine, recorded in {file}")
    if env == "auto":
        raise ResourceError(
            f"RAY_ADDRESS=auto, but no head started by ray start on this machine is recorded in {file}: "
            "start one (make cluster-up), or unset RAY_ADDRESS to start a local Ray"
        )
    return Target(None, f"RAY_ADDRESS unset and no {file}")


def check_address(target: Target | None = None) -> Target:
    """Fail fast, writing nothing, when the resolved address is not a Ray that answers (a TCP probe).

    In a process already connected (a test calling a job's ``main``), that connection is what counts.
    """
    if target is None and ray.is_initialized():
        return Target(ray.get_runtime_context().gcs_address, "this process's Ray")
    target = target or resolve()
    if target.address is None:
        return target
    if target.address.startswith(("http://", "https://")):
        raise ResourceError(
            f"RAY_ADDRESS={target.address} is a job server URL, which only ray job submit and python -m "
            f"mnist_ray.submit use: submit this job with one of them, set RAY_ADDRESS to the head's GCS address "
            f"(e.g. {LOOPBACK}:{GCS_PORT}), or unset it to start a local Ray"
        )
    host, port = _host_port(target.address.split("://", 1)[-1])
    if reachable(host, port):
        _check_is_ray(target, host, port)
        return target
    if target.source.startswith("RAY_ADDRESS"):
        fix = "start that cluster (make cluster-up for a local head), or unset RAY_ADDRESS"
    else:
        file = address_file.path()
        fix = f"start the head again (make cluster-up), set RAY_ADDRESS=local, or delete the stale {file}"
        target = Target(target.address, f"{file}, left by ray start,")
    raise ResourceError(f"{target.source} points at {target.address}, where no Ray head answers: {fix}")


def _check_is_ray(target: Target, host: str, port: int) -> None:
    """A live port that is not a Ray GCS (or a GCS whose token this job lacks) is one line now, not a long hang."""
    answer = gcs_probe.probe(host, port)
    where = f"{target.source} points at {target.address}, which"
    fix = f"use the head's GCS address (port {GCS_PORT} by default), or unset RAY_ADDRESS to start a local Ray"
    if answer.kind == "ray-needs-token" and not _token_configured():
        raise ResourceError(_token_message(target.address))
    if answer.kind in ("ray", "ray-needs-token"):
        return
    if answer.kind == "http" and port == DASHBOARD_PORT:
        raise ResourceError(
            f"{where} answers HTTP ({answer.detail}): that is Ray's dashboard and job server; submit the job with "
            f"ray job submit (or python -m mnist_ray.submit), or use the GCS port {GCS_PORT}"
        )
    said = {
        "http": f"answers HTTP ({answer.detail})",
        "ssh": f"answers SSH ({answer.detail})",
        "silent": "accepts connections but says nothing",
        "closed": "closes connections at once",
        "grpc": "is a gRPC server without Ray's GCS service",
    }.get(answer.kind, f"answers {answer.detail!r}")
    raise ResourceError(f"{where} {said}: that is not a Ray GCS; {fix}")


def _token_configured() -> bool:
    """Whether this process would send a token: RAY_AUTH_MODE=token and a token in the environment or a file."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return False
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def _token_message(address: str | None) -> str:
    return (
        f"the cluster at {address} requires its token: set RAY_AUTH_MODE=token and put the token in "
        "~/.ray/auth_token (or RAY_AUTH_TOKEN)"
    )


def connect(num_cpus: int | None = None, verbose: bool = False, dashboard: bool = True) -> None:
    """Start or join Ray once, print one ``ray: ...`` line saying which; quiet otherwise.

    ``num_cpus`` and ``dashboard`` only apply to a new local instance (all of this machine's CPUs by default).
    Without the dashboard Ray starts about ten fewer processes; a sweep needs it (see below).
    """
    if ray.is_initialized():
        return
    target = check_address()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train V2's controller polls its workers every 2 s by default, and each report and the end of training
    # wait for a poll; Ray passes this setting from the driver to the controller (bench/levers.py measures it).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's status tables; our callbacks print instead
        loggers.quiet_token_notice()  # token auth's notice on every start; --verbose still shows it
        output.quiet()
    # Joining a cluster rejects num_cpus. A sweep's local instance needs the dashboard (on 127.0.0.1): Ray's state
    # API needs it, and Ray Train's placement-group cleaner uses that API to free the CPUs of a run whose controller
    # was killed (a Tune trial stopped by ASHA); without it those CPUs leak and later trials wait forever. So it
    # takes a free port, not a busy 8265. A train or evaluation job's controller lives as long as its driver, and
    # the local instance, with its placement groups, ends with the driver: it needs no dashboard.
    local, kwargs = target.address is None, {}
    if local:
        kwargs = {"num_cpus": num_cpus, "include_dashboard": dashboard}
        loopback_node.loopback_only()
        # One machine: no node of a local instance is preempted, so Train's preemption watcher (one more process
        # per run, polling) has nothing to watch.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    try:
        with one_local_start_at_a_time(local), own_address_for_ray_processes(local):
            kwargs.update({"dashboard_port": free_port(DASHBOARD_PORT)} if local and dashboard else {})
            ray.init(
                address=target.address or "local",
                logging_level=logging.INFO if verbose else logging.WARNING,
                log_to_driver=verbose,
                configure_logging=True,
                **kwargs,
            )
    except ray.exceptions.AuthenticationError:
        raise ResourceError(_token_message(target.address)) from None
    except ConnectionError as exc:  # ray.init wraps a refused token in a ConnectionError
        if isinstance(exc.__cause__, ray.exceptions.AuthenticationError):
            raise ResourceError(_token_message(target.address)) from None
        raise
    stop.reinstall()  # ray.init set its own SIGTERM handlers (Python and C++): the job's handling wins again
    autoscaling_coordinator.start_autoscaling_coordinator()
    print(describe(target), flush=True)


def alive_nodes() -> int:
    """How many nodes of the connected cluster are alive."""
    return sum(1 for n in ray.nodes() if n["Alive"])


def check_single_node(what: str, path: str) -> None:
    """A local ``path`` (``what`` names its flag) is on one machine's disk: refuse it where tasks of other nodes
    would write there."""
    nodes = alive_nodes()
    if nodes > 1:
        raise ResourceError(
            f"this Ray cluster has {nodes} nodes: {what} {path} is on one machine's disk; "
            "pass an s3://bucket/prefix every node reaches"
        )


def describe(target: Target) -> str:
    """The one line a job prints once connected."""
    if target.address is not None:
        return f"ray: joined the cluster at {target.address} ({target.source})"
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return (
        f"ray: started a local instance ({cpus} CPU{'s' * (cpus != 1)}) on {ray.util.get_node_ip_address()} "
        f"({target.source})"
    )


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ResourceError(f"Ray address {address!r} is not host:port, e.g. {LOOPBACK}:{GCS_PORT}")
    return host.strip("[]"), int(port)
