"""Ray's loggers that a job quiets by name: messages a user cannot act on, or progress shown only on request.

Each is a logger of a private Ray 2.60 module, named by that module's path (``logging.getLogger(__name__)``):
- ``ray._private.authentication.authentication_token_setup``: token auth is on by default and says so on every
  start; ``--verbose`` still shows it.
- ``ray._private.worker``: calls into Ray cut short by a stop signal leave results nobody reads, and Ray logs each
  as an "Unhandled error".
- ``ray.data`` and ``ray.data._internal.progress``: Ray Data's progress lines, shown only when a job asks for them.
- ``ray.tune``: a sweep stopped by a signal gets Tune's advice to call ``Tuner.restore(...)``; the job's own next
  step is ``--resume``.
- ``ray.dashboard.modules.job.sdk``: the job client's "WebSocket closed" notes while ``mnist_ray.submit`` streams
  a job's logs.

If Ray renames one of these modules its messages come back, and
``tests/test_ray_boundary.py::test_private_ray_names_still_exist[loggers]`` fails at once; on a real run,
``tests/test_stop.py`` (no "Unhandled error") and
``tests/test_cluster_jobs.py::test_train_then_evaluate_through_the_job_server`` (no token warning) do.
"""

from __future__ import annotations

import logging

TOKEN_NOTICE = "ray._private.authentication.authentication_token_setup"
UNHANDLED_ERRORS = "ray._private.worker"
RAY_DATA, RAY_DATA_PROGRESS = "ray.data", "ray.data._internal.progress"
TUNE, JOB_CLIENT = "ray.tune", "ray.dashboard.modules.job.sdk"


def quiet_token_notice() -> None:
    """Drop Ray's notice, on every start, that token authentication is on (errors still show)."""
    logging.getLogger(TOKEN_NOTICE).setLevel(logging.ERROR)


def quiet_unhandled_errors() -> None:
    """Drop Ray's "Unhandled error" lines for results nobody reads: called once a stop signal arrives."""
    logging.getLogger(UNHANDLED_ERRORS).setLevel(logging.CRITICAL)


def show_ray_data_progress(shown: bool) -> None:
    """Ray Data's progress lines at INFO when ``shown``; otherwise its warnings only, and progress errors only."""
    logging.getLogger(RAY_DATA).setLevel(logging.INFO if shown else logging.WARNING)
    logging.getLogger(RAY_DATA_PROGRESS).setLevel(logging.INFO if shown else logging.ERROR)


def quiet_tune_restore_advice() -> None:
    """Drop Tune's advice to restore a stopped sweep with ``Tuner.restore``: the job says ``--resume`` instead."""
    logging.getLogger(TUNE).setLevel(logging.CRITICAL)


def quiet_job_client_notes() -> None:
    """Drop the job client's notes about its log stream's WebSocket; errors still show."""
    logging.getLogger(JOB_CLIENT).setLevel(logging.WARNING)
