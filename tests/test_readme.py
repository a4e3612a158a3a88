"""The README, run as written: its shell blocks run in a clean shell, as a user would run them.

Every fenced shell block carries a marker on the line before it, so none is skipped by accident:

    <!-- readme-test: NAME -->            run it; blocks with the same NAME run in order in one shell
    <!-- readme-test: skip (REASON) -->   deliberately not run

A tested block runs with ``bash -euo pipefail`` in the checkout, with only PATH=/usr/local/bin:/usr/bin:/bin,
HOME (a temp folder), LANG and TMPDIR set; then the facts in ``CHECKS`` are asserted. The commands live only in
README.md. ``make test-readme`` runs this (``pytest -m readme``); the default run only checks the markers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from mnist_ray import head
from mnist_ray.cluster.connection import DASHBOARD_PORT, GCS_PORT, LOOPBACK, reachable
from tests.conftest import REPO

README = REPO / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "cron", "crontab"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<what>.*?)\s*-->")
SKIP = re.compile(r"skip \((?P<reason>.+)\)")
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    marker: str | None
    code: str


def shell_blocks(text: str) -> list[Block]:
    """Every fenced block in a shell-like language, with the marker comment on the line before its fence."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
        previous = lines[i - 1] if i else ""
        marker = MARKER.fullmatch(previous.strip())
        if fence.group(2) in SHELL_LANGUAGES:
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(i + 1, fence.group(2), marker.group("what") if marker else None, code))
        i = end + 1
    return blocks


def scripts(text: str) -> dict[str, str]:
    """Tested blocks by name; blocks sharing a name are joined in README order."""
    out: dict[str, str] = {}
    for b in shell_blocks(text):
        if b.marker and not b.marker.startswith("skip"):
            out[b.marker] = out.get(b.marker, "") + b.code
    return out


def run_block(code: str, home: Path, tmp: Path, log: Path) -> subprocess.CompletedProcess:
    """Run one script as a user would: the checkout as working directory, a clean environment."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        # Ray's temp dir: a head recorded in /tmp/ray would be joined by every other ray.init() on this machine.
        "TMPDIR": str(tmp),
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


# Facts each tested block must leave behind; a new tested block needs an entry here.


def check_quick_start(home: Path, output: str, tmp: Path) -> None:
    run = home / "mnist_ray" / "runs" / "mnist"
    for name in ("history.parquet", "curves.png", "config.json", "best_checkpoint/model.pt"):
        assert (run / name).is_file(), name
    assert len(pd.read_parquet(run / "history.parquet")) == json.loads((run / "config.json").read_text())["epochs"]
    (report,) = (home / "mnist_ray" / "reports").glob("mnist-*/metrics.parquet")
    assert pd.read_parquet(report)["accuracy"].iloc[0] > 0.99
    assert "ray: started a local instance" in output


def check_local_cluster(home: Path, output: str, tmp: Path) -> None:
    runs, reports = home / "mnist_ray" / "runs", home / "mnist_ray" / "reports"
    assert (runs / "job1" / "best_checkpoint" / "model.pt").is_file()
    for run_id in ("job1", "nightly"):  # by ray job submit, then by python -m mnist_ray.submit
        metrics = pd.read_parquet(reports / run_id / "metrics.parquet")
        assert metrics["n"].iloc[0] == 10000 and metrics["checkpoint"].iloc[0].startswith(str(runs / "job1"))
    assert len(pd.read_parquet(runs / "sweep1" / "trials.parquet")) == 4
    assert "created the cluster's token in ~/.ray/auth_token" in output and (home / ".ray" / "auth_token").is_file()
    joined = f"ray: joined the cluster at {LOOPBACK}:{GCS_PORT} (RAY_ADDRESS, set by ray job submit)"
    assert output.count(joined) == 4, "every job's driver reports the cluster it joined"
    assert "ModuleNotFoundError" not in output  # a job's python is the project's, not the one on the user's PATH


def check_jobs(home: Path, output: str, tmp: Path) -> None:
    """Training (then resuming by name), a small sweep and its best recipe, the evaluation and export examples."""
    runs, reports = home / "mnist_ray" / "runs", home / "mnist_ray" / "reports"
    assert pd.read_parquet(runs / "smoke" / "history.parquet")["epoch"].tolist() == [1, 2, 3]
    assert "epoch   3/3" in output and "epoch   1/3" not in output  # the second command resumed
    assert len(pd.read_parquet(runs / "sweep-small" / "trials.parquet")) == 2
    best = json.loads((runs / "sweep-small" / "best.json").read_text())
    assert "epochs" not in best and "train_limit" not in best
    assert (runs / "from-sweep" / "best_checkpoint" / "model.pt").is_file()
    newest = [d for d in reports.iterdir() if d.is_dir() and d.name not in ("smoke", "gate")]
    assert len(newest) == 1 and (newest[0] / "MANIFEST.json").is_file()
    assert "from-sweep" in pd.read_parquet(newest[0] / "metrics.parquet")["checkpoint"].iloc[0]
    gate = pd.read_parquet(reports / "gate" / "metrics.parquet")
    assert not gate["passed"].iloc[0] and (reports / "smoke" / "MANIFEST.json").is_file()
    assert len(pd.read_parquet(reports / "history.parquet")) == 3
    check_export(home)
    check_compare_and_predict(home)


def check_compare_and_predict(home: Path) -> None:
    """The notebook's comparison (smoke CNN vs smoke ANN) and the predictions on scanned-like PNGs and an IDX file."""
    compare = home / "mnist_ray" / "notebook" / "compare-notebook"
    assert (compare / "MANIFEST.json").is_file()
    assert pd.read_parquet(compare / "comparison.parquet")["model"].tolist() == ["cnn", "ann"]
    digits = pd.read_parquet(home / "mnist_ray" / "predictions" / "digits" / "predictions.parquet")
    assert len(digits) == 8 and digits["error"].isna().all()
    t10k = pd.read_parquet(home / "mnist_ray" / "predictions" / "t10k" / "predictions.parquet")
    assert len(t10k) == 10000


def check_export(home: Path) -> None:
    """The Export example: the smoke run's best checkpoint as model.pt2 and model.onnx, published complete."""
    folder, runs = home / "mnist_ray" / "exports" / "smoke", home / "mnist_ray" / "runs"
    assert {p.name for p in folder.iterdir()} == {"model.pt2", "model.onnx", "export.json", "MANIFEST.json"}
    meta = json.loads((folder / "export.json").read_text())
    assert meta["source"]["checkpoint"] == str(runs / "smoke" / "best_checkpoint" / "model.pt")


def check_tracking(home: Path, output: str, tmp: Path) -> None:
    """The smoke run tracked in a SQLite store beside HOME: its parameters, epochs, outputs and evaluation."""
    import mlflow

    uri = f"sqlite:///{home}/mlruns/mlflow.db"
    run_id = json.loads((home / "mnist_ray" / "runs" / "tracked" / "tracking.json").read_text())["run_id"]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2]
    assert run.data.metrics["test_accuracy"] > 0.9
    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"curves.png", "history.parquet", "config.json", "best_checkpoint", "evaluation"}
    assert (home / "mlruns" / "mlartifacts" / "mnist_ray").is_dir()  # beside the store: nothing in the checkout
    assert f"mlflow run: {run_id} in {uri}" in " ".join(output.split())
    assert re.search(r"^\s*tracked\s+FINISHED\s+0.004\s", output, re.M), "the listing shows the run and its lr"


CHECKS: dict[str, Callable[[Path, str, Path], None]] = {
    "quick-start": check_quick_start,
    "jobs": check_jobs,
    "local-cluster": check_local_cluster,
    "tracking": check_tracking,
}


@pytest.mark.readme
def test_every_shell_block_is_marked():
    """A new shell block in the README must say whether the README check runs it."""
    blocks = shell_blocks(README.read_text())
    unmarked = [f"README.md:{b.line}" for b in blocks if b.marker is None]
    assert not unmarked, f"add <!-- readme-test: NAME --> or <!-- readme-test: skip (why) --> before {unmarked}"
    for b in blocks:
        if b.language in ("cron", "crontab") or b.marker.startswith("skip"):
            assert SKIP.fullmatch(b.marker), f"README.md:{b.line}: a skipped block says why: skip (REASON)"
    assert set(scripts(README.read_text())) == set(CHECKS), "each tested README block has facts to check in CHECKS"


def test_an_unmarked_or_unexplained_block_is_found():
    text = "<!-- readme-test: a -->\n```bash\necho 1\n```\n\n```sh\necho 2\n```\n<!-- readme-test: skip -->\n```cron\n"
    text += "* * * * * x\n```\n```python\nprint(3)\n```\n<!-- readme-test: a -->\n```bash\necho 4\n```\n"
    assert [(b.line, b.marker) for b in shell_blocks(text)] == [(2, "a"), (6, None), (10, "skip"), (17, "a")]
    assert scripts(text) == {"a": "echo 1\necho 4\n"}
    assert not SKIP.fullmatch("skip")


@pytest.fixture
def selected(request):
    """Run README blocks only when asked for (make test-readme): they take minutes and ports 6379/8265."""
    if (request.config.option.markexpr or "").strip() != "readme":
        pytest.skip("the README check: run it with `make test-readme` (pytest -m readme)")


@pytest.mark.readme
@pytest.mark.slow
@pytest.mark.parametrize("name", list(scripts(README.read_text())))
def test_readme_block(name, selected, tmp_path):
    code = scripts(README.read_text())[name]
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))  # short: Ray's socket paths have a length limit
    starts_head = "cluster-up" in code
    if starts_head:
        busy = [p for p in (GCS_PORT, DASHBOARD_PORT) if reachable(LOOPBACK, p, timeout=0.5)]
        assert not busy, f"ports {busy} on {LOOPBACK} are in use: the README's head needs them"
        assert not (REPO / head.HEAD_DIR / "pid").exists(), "a head from make cluster-up is running: stop it first"
    in_repo_before = {p.name for p in REPO.iterdir()}
    start = time.monotonic()
    try:
        out = run_block(code, home, tmp, tmp_path / f"{name}.log")
    finally:
        left_running = head.stop_head(REPO / head.HEAD_DIR) if starts_head else None
    print(f"README block {name!r}: exit {out.returncode} in {time.monotonic() - start:.0f}s")
    assert out.returncode == 0, f"README block {name!r} failed:\n{out.stdout[-6000:]}"
    CHECKS[name](home, out.stdout, tmp)
    assert {p.name for p in REPO.iterdir()} & {"runs", "reports"} <= in_repo_before, "job outputs in the checkout"
    if starts_head:
        assert left_running is None, "make cluster-down left the head running"
        (pid,) = map(int, re.findall(r"started a Ray head \(pid (\d+)", out.stdout))
        assert not head.session_processes(pid), f"processes of the head's session {pid} outlived make cluster-down"
        assert not reachable(LOOPBACK, GCS_PORT)  # (8265 may be taken at once by another local Ray's dashboard)
        assert not (tmp / "ray" / "ray_current_cluster").exists(), "a stale address file would stall later jobs"
    shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs; kept when the block failed
