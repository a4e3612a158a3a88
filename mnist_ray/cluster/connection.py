"""Which Ray a job uses: resolved before ``ray.init``, checked, and printed as one line.

A job joins the cluster in ``RAY_ADDRESS`` when it is set (``ray job submit`` sets it for the driver); else the head
that ``ray start`` recorded in Ray's address file on this machine, if that file exists; else it starts a local Ray.
An address that no Ray answers fails at once instead of ``ray.init`` retrying for minutes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray
from ray._common.utils import get_ray_address_file  # Ray's own rule: $RAY_TMPDIR, else $TMPDIR, else /tmp; + /ray

from mnist_ray.cluster import gcs_probe, stop
from mnist_ray.errors import ResourceError
from mnist_ray.ray_workarounds import output

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


def address_file() -> Path:
    """The file in which ``ray start`` records its head's address on this machine."""
    return Path(get_ray_address_file(None))


def resolve() -> Target:
    """Apply Ray's rule without connecting: RAY_ADDRESS, else the address file of ``ray start``, else local."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return Target(None, "RAY_ADDRESS=local")
    if env and env != "auto":
        by_job_server = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set for a driver started by the job server
        return Target(env, "RAY_ADDRESS, set by ray job submit" if by_job_server else "RAY_ADDRESS")
    file = address_file()
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
        file = address_file()
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
        # Token auth is on by default in Ray 2.60 and says so on every start; --verbose still shows it.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        output.quiet()
    # Joining a cluster rejects num_cpus. A sweep's local instance needs the dashboard (on 127.0.0.1): Ray's state
    # API needs it, and Ray Train's placement-group cleaner uses that API to free the CPUs of a run whose controller
    # was killed (a Tune trial stopped by ASHA); without it those CPUs leak and later trials wait forever. So it
    # takes a free port, not a busy 8265. A train or evaluation job's controller lives as long as its driver, and
    # the local instance, with its placement groups, ends with the driver: it needs no dashboard.
    local, kwargs = target.address is None, {}
    if local:
        kwargs = {"num_cpus": num_cpus, "include_dashboard": dashboard}
        _loopback_only()
        # One machine: no node of a local instance is preempted, so Train's preemption watcher (one more process
        # per run, polling) has nothing to watch.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    try:
        with _one_local_start_at_a_time(local), _own_address_for_ray_processes(local):
            kwargs.update({"dashboard_port": _free_port(DASHBOARD_PORT)} if local and dashboard else {})
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
    _start_autoscaling_coordinator()
    print(describe(target), flush=True)


EARLY_COORDINATOR_ENV = "MNIST_RAY_EARLY_COORDINATOR"
"""Set to 0 to leave the AutoscalingCoordinator to Ray (bench/start_levers.py's "Ray's default" side)."""


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


def _start_autoscaling_coordinator() -> None:
    """Start Ray's ``AutoscalingCoordinator`` actor now, from the driver, instead of at the first fit or evaluation.

    Ray Train's controller and Ray Data's executor both ask this detached actor for resources, and the controller
    waits up to 5 s for its answer. Created by the controller, it is a new process (the controller's runtime env is
    not the job's); created here, it can take a worker process Ray prestarted for the driver, and starts while the
    job prepares its data. ``python -m bench.start_levers coordinator`` measures it (bench/NOTES.md). It is an
    internal API of Ray Data: if it moves, only this head start is lost.
    """
    if os.environ.get(EARLY_COORDINATOR_ENV, "1") == "0":
        return
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator

        get_or_create_autoscaling_coordinator()  # returns at once: the actor starts in the background
    except Exception as e:  # noqa: BLE001 - an optimisation; Ray creates the actor itself when it needs it
        logging.getLogger(__name__).debug("AutoscalingCoordinator not started early: %s", e)


@contextlib.contextmanager
def _one_local_start_at_a_time(local: bool):
    """Hold a machine-wide lock while a new local instance picks its dashboard port and starts.

    The port is picked free, then bound by Ray's dashboard a few seconds later. Two local instances starting at
    once (two jobs, or the suite's two pytest processes) both found 8265 free, and the second one's start failed
    on it. Under the lock the second start sees 8265 taken and picks another free port.
    """
    if not local:
        yield
        return
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "mnist_ray_local_start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _loopback_only() -> None:
    """Put a new local instance's node on 127.0.0.1, so no port of a one-machine run is reachable from the network.

    By default Ray on Linux advertises, and binds its GCS, raylet, workers and dashboard agent to, this machine's
    interface address. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch for a loopback node: the environment
    variable reaches the processes Ray starts; Ray read it into a constant when it was imported, so the driver's
    copy is set too. Torch's rendezvous follows the node address (``mnist_ray.ray_workarounds.rendezvous``).
    To serve other machines, start a head with ``ray start`` instead.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _own_address_for_ray_processes(local: bool):
    """While a new local instance starts, give its processes their own GCS address in ``RAY_ADDRESS``.

    Ray's processes inherit the starting driver's environment. Ray Train's placement-group cleaner asks
    Ray's state API for actors with no address, which resolves "auto": with two Ray instances on one
    machine (two local jobs, or a local job beside a ``ray start`` head) it fails, the placement groups of
    stopped trials are never freed, and a sweep waits forever. A chosen GCS port named in ``RAY_ADDRESS``
    removes the guess. The driver's own environment is restored afterwards.
    """
    if not local or "RAY_GCS_SERVER_PORT" in os.environ:
        yield
        return
    from ray._private.services import get_node_ip_address

    port = str(_free_port(first=None))
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ.update(RAY_GCS_SERVER_PORT=port, RAY_ADDRESS=f"{get_node_ip_address()}:{port}")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_orphaned_placement_groups(settle_s: float = 2.0, wait_s: float = 30.0) -> int:
    """Remove the placement groups this job created that no actor uses; returns how many.

    Ray Train hands each worker group's placement group to a cleaner actor. When Tune stops a trial just as the
    trial's controller creates a worker group, the cleaner can miss it, and the group holds its CPUs for as long
    as the driver lives. Call it only when no run of this job is active (after a sweep); during one,
    :class:`PlacementGroupReaper` does this for the worker groups alone. A group unused now and again after
    ``settle_s`` is an orphan. A worker group still used when the sweep returns (a stopped trial's workers
    shutting down) is watched for up to ``wait_s`` and removed once unused: one left so held the CPU a test's
    next run needed, and that run waited forever (a CI check, 2026-11-26). Needs the state API (the
    dashboard); without it nothing is removed.
    """
    freed, deadline = 0, time.monotonic() + wait_s
    try:
        while True:
            orphans = _unused_groups(worker_groups_only=False)
            if orphans:
                time.sleep(settle_s)
                orphans &= _unused_groups(worker_groups_only=False)
            for group in orphans:
                _remove_group(group)
            freed += len(orphans)
            if not _job_groups(worker_groups_only=True) or time.monotonic() >= deadline:
                return freed
            time.sleep(1.0)
    except Exception as e:  # the state API is optional here: a missing dashboard must not fail a finished sweep
        logging.getLogger(__name__).debug("placement groups not checked: %s", e)
        return freed


def _job_groups(worker_groups_only: bool) -> dict[str, object]:
    """Created placement groups of this job by id; ``worker_groups_only``: those reserving CPUs or GPUs."""
    from ray.util.state import list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    groups = list_placement_groups(address=_state_address(), detail=True, limit=10_000, raise_on_missing_output=False)
    mine = [g for g in groups if g.creator_job_id == job and g.state == "CREATED"]
    if worker_groups_only:
        mine = [g for g in mine if any({"CPU", "GPU"} & set(b["unit_resources"]) for b in g.bundles or [])]
    return {g.placement_group_id: g for g in mine}


def _unused_groups(worker_groups_only: bool) -> set[str]:
    """Created placement groups of this job that no actor (alive, pending or restarting) uses.

    ``worker_groups_only`` keeps the groups that reserve CPUs or GPUs: Ray Train's worker groups. A sweep's own
    trial groups reserve memory only (``tuning.make_tuner``), and Tune creates them ahead of their actors.
    """
    from ray.util.state import list_actors

    actors = list_actors(address=_state_address(), detail=True, limit=10_000, raise_on_missing_output=False)
    used = {a.placement_group_id for a in actors if a.placement_group_id and a.state != "DEAD"}
    return set(_job_groups(worker_groups_only)) - used


def _state_address() -> str:
    """This driver's own GCS address for Ray's state API.

    Given no address, the state API guesses "auto", which fails with two Ray instances on one machine (a sweep
    beside another local job, or the suite run as two pytest processes): the checks above would then free nothing.
    """
    return ray.get_runtime_context().gcs_address


def _remove_group(group_id: str) -> None:
    from ray.util.placement_group import PlacementGroup

    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


class PlacementGroupReaper:
    """While a sweep runs: remove Ray Train worker groups that no actor has used for ``grace_s`` seconds.

    Such a group is what the cleaner race above leaves when Tune stops a trial between its controller creating
    the worker group and starting the workers. Mid-sweep, two such groups hold both CPUs of a 2-core machine, the
    next trials' groups stay pending, and the sweep waits forever (seen in ``bench/sweep.py``, 2026-11-26). A live
    worker group has actors within moments of being created, so ``grace_s`` unused means nobody will use it.
    Checks every ``every_s`` seconds on a daemon thread; a state API that does not answer is skipped quietly.
    """

    def __init__(self, grace_s: float = 30.0, every_s: float = 10.0, on_free=None) -> None:
        import threading

        self.grace_s, self.every_s = grace_s, every_s
        self._on_free = on_free or (lambda n: None)
        self._unused_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="placement-group-reaper", daemon=True)

    def __enter__(self) -> PlacementGroupReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check(time.monotonic())
            except Exception as e:  # never let the reaper take a sweep down
                logging.getLogger(__name__).debug("placement groups not checked: %s", e)

    def check(self, now: float) -> int:
        """One pass: note newly unused worker groups, remove those unused for ``grace_s``; returns how many."""
        unused = _unused_groups(worker_groups_only=True)
        self._unused_since = {g: self._unused_since.get(g, now) for g in unused}
        due = [g for g, since in self._unused_since.items() if now - since >= self.grace_s]
        for group in due:
            _remove_group(group)
            del self._unused_since[group]
        if due:
            self._on_free(len(due))
        return len(due)


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


def _free_port(first: int | None) -> int:
    """A TCP port that is free right now: ``first`` when available (8265 for the dashboard), else any."""
    for port in (first, 0) if first else (0,):
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise OSError("no free TCP port")
