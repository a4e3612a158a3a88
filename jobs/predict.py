"""Entrypoint for `ray job submit` and local runs; the job itself is :mod:`mnist_ray.jobs.predict`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job's working dir

from mnist_ray.jobs.predict import main  # noqa: E402
from mnist_ray.settings import cli  # noqa: E402

if __name__ == "__main__":
    cli.main(main)
