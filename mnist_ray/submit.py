"""Submit a job to a Ray cluster, stream its logs, and exit with the job's own exit code.

``ray job submit`` exits 1 for every failed job, so a scheduler cannot tell the evaluation's "accuracy below
--min-accuracy" (exit 3) from bad input (2) or a crash (1). This does what ``ray job submit`` does, through
``ray.job_submission.JobSubmissionClient``, and then exits with the entrypoint's exit code::

    python -m mnist_ray.submit [--address URL] [--working-dir DIR] [--no-wait] -- python jobs/evaluate.py ...

The address is ``--address``, else ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS`` (as for ``ray job submit``): the
job server's URL, e.g. ``http://127.0.0.1:8265``. The token is sent as ``ray job submit`` sends it: with
``RAY_AUTH_MODE=token``, from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``.

Ctrl-C, SIGTERM or SIGHUP to this process stops the job (``ray job stop``) and exits 128 + the signal (130, 143).

Exit codes: the entrypoint's own (a driver killed by signal N gives 128 + N); 1 when the job failed without one
(its runtime environment could not be set up) or was stopped; 2, with one ``error:`` line, when the job server
cannot be reached or refuses the submission.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from urllib.parse import urlsplit

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from mnist_ray.cluster import stop
from mnist_ray.cluster.connection import reachable
from mnist_ray.errors import EXIT_USAGE, MnistRayError
from mnist_ray.ray_workarounds import loggers

ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
STOP_WAIT_S = 10.0
"""After a stop is passed on, how long to wait for the job to end (the job server's own grace is 3 s)."""
EXIT_JOB_FAILED = 1
"""The job failed or was stopped without an exit code of its own."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags, then ``--`` and the entrypoint."""
    p = argparse.ArgumentParser(
        prog="python -m mnist_ray.submit",
        description=__doc__.splitlines()[0],
        epilog="exit codes: the entrypoint's own; 1 if the job failed without one; 2 if the job server cannot be used",
    )
    p.add_argument("--address", help="job server URL [RAY_API_SERVER_ADDRESS or RAY_ADDRESS]")
    p.add_argument("--working-dir", help="local folder uploaded as the job's working directory (e.g. .)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and exit 0 once it is submitted")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command the job runs")
    args = p.parse_args(argv)
    if args.entrypoint[:1] == ["--"]:
        args.entrypoint = args.entrypoint[1:]
    if not args.entrypoint:
        p.error("no entrypoint: add -- and the command, e.g. -- python jobs/evaluate.py")
    return args


def job_server_address(flag: str | None) -> str:
    """``--address``, else the environment; a server that does not accept connections is an error here."""
    address = flag or next((os.environ[v] for v in ADDRESS_VARIABLES if os.environ.get(v)), None)
    if not address:
        raise MnistRayError("no job server address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    url = urlsplit(address if "://" in address else f"http://{address}")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise MnistRayError(f"job server address {address!r} is not a URL like http://127.0.0.1:8265")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not reachable(url.hostname, port):
        raise MnistRayError(
            f"no Ray job server answers at {address}: start the cluster (make cluster-up for a local head) "
            "or pass its dashboard address with --address / RAY_ADDRESS"
        )
    return address


def connect(address: str) -> JobSubmissionClient:
    """A client for ``address``; Ray's client would let RAY_ADDRESS override an explicit address, so hide it."""
    saved = {v: os.environ.pop(v) for v in ADDRESS_VARIABLES if v in os.environ}
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise MnistRayError(
            f"the job server at {address} refused the request: it needs the cluster's token; set RAY_AUTH_MODE=token "
            "and put the token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MnistRayError(f"cannot use the job server at {address}: {exc}") from None
    finally:
        os.environ.update(saved)


def submit(client: JobSubmissionClient, entrypoint: list[str], working_dir: str | None) -> str:
    """Submit the entrypoint (quoted as ``ray job submit`` quotes it); returns the job id."""
    runtime_env = {"working_dir": working_dir} if working_dir else None
    try:
        return client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
    except AuthenticationError:
        raise MnistRayError("the job server refused the submission: set RAY_AUTH_MODE=token with its token") from None
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        raise MnistRayError(f"the job server refused the submission: {' '.join(str(exc).split())}") from None


def stream_logs(client: JobSubmissionClient, job_id: str) -> None:
    """Copy the job's output to stdout as it comes, until the job ends (or the stream breaks)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    with contextlib.suppress(Exception):  # a broken stream loses log lines, not the exit code: wait() still asks
        asyncio.run(tail())


def wait(client: JobSubmissionClient, job_id: str, poll_s: float = 1.0) -> JobDetails:
    """The job's details once it is in a terminal state."""
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def exit_code(info: JobDetails) -> int:
    """The entrypoint's exit code as a shell reports it; 1 for a failed or stopped job that has none."""
    if info.status == JobStatus.SUCCEEDED:
        return 0
    code = info.driver_exit_code
    if code is None or code == 0:
        return EXIT_JOB_FAILED
    return 128 - code if code < 0 else code  # killed by signal N: Popen gives -N, a shell 128 + N


def stop_job(client: JobSubmissionClient, job_id: str, exc: KeyboardInterrupt) -> int:
    """Pass a stop on to the job server, wait (bounded) for the job to end, and return 128 + the signal."""
    signum = exc.signum if isinstance(exc, stop.Stopped) else (stop.received() or signal.SIGINT)
    name = signal.Signals(signum).name
    with contextlib.suppress(Exception):
        client.stop_job(job_id)
    status = "still stopping"
    deadline = time.monotonic() + STOP_WAIT_S
    with contextlib.suppress(Exception):
        while time.monotonic() < deadline:
            info = client.get_job_info(job_id)
            if info.status.is_terminal():
                status = info.status.value
                break
            time.sleep(0.5)
    print(f"stopped by {name}; asked the job server to stop {job_id}: {status}", file=sys.stderr, flush=True)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    """Submit, stream the logs, and return the job's exit code (2 with one error line if the server is unusable)."""
    args = parse_args(argv)
    loggers.quiet_job_client_notes()
    try:
        address = job_server_address(args.address)
        client = connect(address)
        job_id = submit(client, args.entrypoint, args.working_dir)
    except MnistRayError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return EXIT_USAGE
    print(f"submitted {job_id} to {address}", file=sys.stderr, flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        stream_logs(client, job_id)
        info = wait(client, job_id)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP: the job is stopped too, not left running
        return stop_job(client, job_id, exc)
    code = exit_code(info)
    detail = "" if info.driver_exit_code is not None else f": {(info.message or '').strip()[:500]}"
    print(f"job {job_id} {info.status.value}, exit code {code}{detail}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    stop.install()  # Ctrl-C, SIGTERM, SIGHUP: stop the job too (see stop_job)
    sys.exit(main())
