"""Batch prediction at scale: jobs/predict.py on 10k and 100k PNG files and 1M Parquet rows (the 1M on a moto S3
server), images/s and the driver's peak RSS, against a plain one-process loop (decode, frame and score) over the
same inputs.

Each case is one fresh ``python jobs/predict.py`` process of the checkout under test (``--repo``) with its own
local Ray; its driver's peak RSS is the ``VmHWM`` of that process alone, polled every 0.1 s (Ray's processes are
the driver's children, so RUSAGE_CHILDREN would count them too). The plain loop is a fresh process too, timed
from start to exit like the job, using the checkout's own decode and framing functions and a plain torch loop in
the evaluation's layout and chunks. ``--label before`` records today's figures, ``--label after`` the new ones.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from bench import common

ROOT = common.WORK / "predict_scale"
CKPT_RUN = "predict_scale_ckpt"
BUCKET = "predict-scale"
SIZES = {
    "10k": ("png", 10_000),
    "100k": ("png", 100_000),
    "1m": ("parquet", 1_000_000),
    "2k_local": ("parquet_local", 2_000),  # the driver's memory on a small and a 100x larger Parquet (issue: within
    "200k_local": ("parquet_local", 200_000),  # 150 MB of each other once prediction streams)
}
PER_FOLDER = 1000
ROW_GROUP = 65_536
TIMEOUT_S = 3600
SCORED = re.compile(r"(\d+) scored, (\d+) unreadable")


def _pool(n: int) -> np.ndarray:
    """``n`` MNIST digits (uint8 28x28): the test set, then the train set, repeated as needed."""
    from mnist_ray import data

    arrays = data.load("mnist")
    both = np.concatenate([arrays.test_x, arrays.train_x])
    return both[np.arange(n) % len(both)]


def _write_folder(job: tuple[Path, int, np.ndarray]) -> None:
    """Write one subfolder of PNGs: each digit upscaled 2x to 56x56 and inverted (black ink on white paper)."""
    from PIL import Image

    folder, first, images = job
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images, first):
        Image.fromarray(255 - x.repeat(2, 0).repeat(2, 1)).save(folder / f"{i:07d}.png")


def png_input(n: int) -> Path:
    """A folder of ``n`` PNG files in subfolders of at most 1000, made once (2 processes) and cached."""
    root, done = ROOT / f"png_{n}", ROOT / f"png_{n}.done"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    images = _pool(n)
    jobs = [(root / f"{a // PER_FOLDER:04d}", a, images[a : a + PER_FOLDER]) for a in range(0, n, PER_FOLDER)]
    with multiprocessing.Pool(2) as pool:
        pool.map(_write_folder, jobs)
    done.touch()
    return root


def parquet_input(n: int) -> Path:
    """A Parquet file of ``n`` rows, column ``image`` a list<uint8> of 784 pixels, row groups of 65,536; cached."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ROOT / f"pixels_{n}.parquet"
    if path.is_file():
        return path
    images = _pool(n).reshape(n, -1)
    schema = pa.schema([("image", pa.list_(pa.uint8()))])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for a in range(0, n, ROW_GROUP):
            block = images[a : a + ROW_GROUP]
            offsets = pa.array(np.arange(len(block) + 1, dtype=np.int32) * block.shape[1])
            column = pa.ListArray.from_arrays(offsets, pa.array(block.ravel()))
            writer.write_table(pa.table({"image": column}, schema=schema), row_group_size=ROW_GROUP)
    tmp.rename(path)
    return path


def upload(local: Path) -> str:
    """Start the moto S3 server (AWS environment exported into os.environ) and upload ``local``; its s3:// URI."""
    import pyarrow.fs as pafs

    from tests import s3

    server = s3.start()
    s3.make_bucket(BUCKET)
    fs = pafs.S3FileSystem(endpoint_override=server.endpoint)
    pafs.copy_files(str(local), f"{BUCKET}/in/pixels.parquet", destination_filesystem=fs)
    return f"s3://{BUCKET}/in/pixels.parquet"


def child_env(repo: Path) -> dict[str, str]:
    """The environment of every child: the checkout under test first on the path, a local Ray of its own."""
    return {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(repo)}


def verify(repo: Path) -> None:
    """Check that a child started like the job's imports mnist_ray from ``repo``, not from the installed package."""
    code = "import mnist_ray; print(mnist_ray.__file__)"
    found = subprocess.run([common.PY, "-c", code], cwd=repo, env=child_env(repo), capture_output=True, text=True)
    if not found.stdout.strip().startswith(f"{repo}/"):
        raise SystemExit(f"mnist_ray resolves to {found.stdout.strip() or found.stderr[-500:]}, not under {repo}")


def checkpoint(repo: Path) -> Path:
    """A smoke-trained checkpoint (its accuracy does not matter here), trained once with the checkout under test."""
    run = common.WORK / "runs" / CKPT_RUN
    model = run / "best_checkpoint" / "model.pt"
    if not model.is_file():
        shutil.rmtree(run, ignore_errors=True)
        args = ["jobs/train.py", "--output", str(run.parent), "--name", CKPT_RUN, "--preset", "smoke"]
        subprocess.run([common.PY, *args], cwd=repo, env=child_env(repo), check=True, capture_output=True)
    return model


def wait_quiet(limit_s: float = 900) -> None:
    """Wait (at most ``limit_s``) for the 1-minute load average to fall under half the cores: a test run or the
    previous case still sharing them would slow the next measurement."""
    start = time.perf_counter()
    while os.getloadavg()[0] >= os.cpu_count() / 2 and time.perf_counter() - start < limit_s:
        time.sleep(5)


def measured(argv: list[str], repo: Path, name: str) -> dict:
    """Run ``argv`` from ``repo``: wall seconds, exit code, output (kept in logs/<name>.log), peak RSS (VmHWM, MB)."""
    log = ROOT / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    wait_quiet()
    load_start, start, peak_kb = _load(), time.perf_counter(), 0
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=repo, env=child_env(repo), stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None and time.perf_counter() - start < TIMEOUT_S:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
            except (OSError, AttributeError):  # exiting: the last value read stands
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - start
    loads = {"loadavg_at_start": load_start, "loadavg_at_end": _load()}
    return {"rc": rc, "wall_s": wall, "peak_rss_mb": round(peak_kb / 1024), "output": log.read_text(), **loads}


def _load() -> list[float]:
    """The 1, 5 and 15-minute load averages: another process may have shared the cores."""
    return [round(x, 2) for x in os.getloadavg()]


def _plain_loop() -> None:  # runs in a fresh process (its source is sent with python -c); imports nothing above
    """Decode, frame and score every input in one process, printing one JSON line: images and loop seconds.

    argv: kind (png or parquet), input path, checkpoint, repo. Files go through the checkout's ``read_file``,
    Parquet rows (read locally, one row group at a time) through its ``from_value`` and ``to_mnist``; scoring is
    the evaluation's layout (channels_last, chunks of ``CPU_CHUNK``) in a plain torch loop on every core.
    """
    import json
    import os
    import sys
    import time

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    import mnist_ray
    from mnist_ray import data
    from mnist_ray.inference import decoding, scoring
    from mnist_ray.training import checkpoints, models

    kind, source, ckpt, repo = sys.argv[1:5]
    assert mnist_ray.__file__.startswith(repo + "/"), f"mnist_ray from {mnist_ray.__file__}, not {repo}"
    start = time.perf_counter()
    models.set_cpu_threads(os.cpu_count())
    state = checkpoints.load(ckpt)
    model = checkpoints.build_model(state).to(memory_format=torch.channels_last)
    stats = checkpoints.normalization(state) if hasattr(checkpoints, "normalization") else None

    def blocks():
        if kind == "png":
            files = sorted(os.path.join(d, f) for d, _, names in os.walk(source) for f in names)
            for a in range(0, len(files), 65_536):
                items = [i for f in files[a : a + 65_536] for i in decoding.read_file(f, "auto", "image")]
                yield np.stack([i.image for i in items if i.error is None])
        else:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=65_536, columns=["image"]):
                pixels = batch.column(0).flatten().to_numpy().reshape(len(batch), -1)
                yield np.stack([decoding.to_mnist(decoding.from_value(row), "auto") for row in pixels])

    images = 0
    with torch.inference_mode():
        for block in blocks():
            for part in data.normalize(block, stats).split(scoring.CPU_CHUNK):
                model(part).softmax(1).topk(3, dim=1)
            images += len(block)
    print(json.dumps({"images": images, "loop_s": time.perf_counter() - start, "mnist_ray": mnist_ray.__file__}))


def plain(kind: str, source: Path, model: Path, repo: Path, name: str) -> dict:
    """The plain loop over ``source`` in a fresh process: images, images/s (process start to exit), peak RSS."""
    code = inspect.getsource(_plain_loop) + "\n_plain_loop()\n"
    run = measured([common.PY, "-c", code, kind, str(source), str(model), str(repo)], repo, name)
    if run["rc"] != 0:
        return {"plain_error": run["output"][-2000:]}
    images = json.loads(run["output"].strip().splitlines()[-1])["images"]
    return {
        "plain_images": images,
        "plain_wall_s": round(run["wall_s"], 1),
        "plain_images_per_s": round(images / run["wall_s"]),
        "plain_peak_rss_mb": run["peak_rss_mb"],
        "plain_loadavg_at_start": run["loadavg_at_start"],
        "plain_loadavg_at_end": run["loadavg_at_end"],
    }


def job(source: str, model: Path, output: str, repo: Path, name: str) -> dict:
    """One fresh ``jobs/predict.py`` run: its command, images scored, wall, images/s and driver peak RSS."""
    args = ["jobs/predict.py", "--input", source, "--checkpoint", str(model), "--output", output]
    run = measured([common.PY, *args], repo, name)
    result = {"command": "python " + " ".join(args), "loadavg_at_start": run["loadavg_at_start"]}
    result.update(wall_s=round(run["wall_s"], 1), driver_peak_rss_mb=run["peak_rss_mb"], rc=run["rc"])
    result["loadavg_at_end"] = run["loadavg_at_end"]
    found = SCORED.findall(run["output"])
    if run["rc"] != 0 or not found:
        return {**result, "error": run["output"][-2000:]}
    images, unreadable = (int(x) for x in found[-1])
    return {**result, "images": images, "unreadable": unreadable, "images_per_s": round(images / run["wall_s"])}


def case(size: str, model: Path, repo: Path, label: str) -> dict:
    """Make the input of ``size``, run the job then the plain loop on it; their figures and ratio."""
    kind, n = SIZES[size]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    if kind in ("png", "parquet_local"):
        local = png_input(n) if kind == "png" else parquet_input(n)
        source, output = str(local), str(ROOT / "out" / f"{label}-{size}-{stamp}")
        (ROOT / "out").mkdir(parents=True, exist_ok=True)
    else:
        local = parquet_input(n)
        source, output = upload(local), f"s3://{BUCKET}/out/{label}-{size}-{stamp}"
    result = {"input": f"{n:,} {'PNG files (56x56)' if kind == 'png' else 'Parquet rows (784 pixels)'}"}
    name = f"{label}-{size}"
    result |= job(source, model, output, repo, name) | plain(kind, local, model, repo, f"{name}-plain")
    if kind == "parquet":
        result["plain_input"] = f"the local copy {local} of the Parquet file the job read from S3"
    if "images_per_s" in result and "plain_images_per_s" in result:
        result["ratio"] = round(result["images_per_s"] / result["plain_images_per_s"], 3)
    if not output.startswith("s3://"):
        shutil.rmtree(output, ignore_errors=True)
    print(f"predict_scale {label} {size}: {json.dumps(result)}", flush=True)
    return result


def _earlier_cases(name: str, sizes: list[str]) -> dict:
    """The cases of an earlier result file that this run does not measure again (a --sizes subset adds to it)."""
    path = common.RESULTS / f"{name}.json"
    earlier = json.loads(path.read_text()).get("cases", {}) if path.is_file() else {}
    return {size: result for size, result in earlier.items() if size not in sizes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=common.REPO, help="the checkout whose jobs/predict.py to run")
    p.add_argument("--label", choices=("before", "after"), default="after", help="which result file to write")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"a comma-separated subset of {', '.join(SIZES)}")
    args = p.parse_args(argv)
    repo, sizes = args.repo.resolve(), args.sizes.split(",")
    if unknown := set(sizes) - set(SIZES):
        p.error(f"--sizes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIZES)}")
    ROOT.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(repo)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    verify(repo)
    model = checkpoint(repo)
    name = "predict_scale" + ("_before" if args.label == "before" else "")
    cases = {**_earlier_cases(name, sizes), **{size: case(size, model, repo, args.label) for size in sizes}}
    common.save(
        name,
        {
            "command": f"python -m bench.predict_scale --repo {repo} --label {args.label} --sizes {','.join(sizes)}",
            "repo": str(repo),
            "commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "checkpoint": str(model),
            "plain_loop": "one fresh process, start to exit: the checkout's read_file (files) or from_value + "
            "to_mnist (Parquet rows), then channels_last scoring in chunks of CPU_CHUNK on every core",
            "cases": cases,
        },
    )


if __name__ == "__main__":
    main()
