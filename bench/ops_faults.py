"""The faults clusters and schedulers cause, each tried on a real job process; tally how each ends.

Stop signals (SIGTERM, SIGHUP) to every job, two jobs on one run name, full disks (tmpfs), addresses that are live
ports but not Ray, an out-of-range value, a dangling symlink in a predict input. The promise for each: the
documented exit code, one line saying what happened (and, for a stop, what happens next), no traceback or Ray dump,
nothing half-published, and the same command resumes where that applies. Every job starts its own local Ray.
Run: ``.venv/bin/python -m bench.ops_faults`` (also ``python bench/run_all.py ops_faults``); about 6 minutes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import common

SMALL = ["--train-limit", "8192", "--val-size", "512", "--batch-size", "64", "--no-augment"]
ENV = {**os.environ, "RAY_ADDRESS": ""}


def _start(script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [common.PY, f"jobs/{script}", *args]
    return subprocess.Popen(
        cmd, cwd=common.REPO, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _signal_after(proc: subprocess.Popen, prefix: str, sig: int) -> tuple[int, str, str, float]:
    """Send ``sig`` once stdout shows ``prefix``; (exit code, stdout, stderr, seconds from signal to exit)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            sent = time.monotonic()
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
            return proc.returncode, "".join(seen) + out, err, time.monotonic() - sent
    out, err = proc.communicate()
    return proc.returncode, "".join(seen) + out, err, float("nan")


def _run(script: str, *args: str, env: dict | None = None) -> tuple[int, str, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [common.PY, f"jobs/{script}", *args],
        cwd=common.REPO,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def _clean(code: int, out: str, err: str, want_code: int, line_start: str) -> tuple[bool, str]:
    """The exit code, exactly one stderr line starting ``line_start``, no traceback, dump or Ray error line."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "WARNING" not in ln]
    both = out + err
    ok = code == want_code and len(lines) == 1 and lines[0].startswith(line_start)
    ok = ok and not any(s in both for s in ("Traceback", "*** ", "Unhandled error"))
    return ok, f"exit {code}: {lines[-1] if lines else '(no line)'}"


def stop_train(work: Path, sig: int) -> tuple[bool, str]:
    args = ["--output", str(work), "--name", "s", "--epochs", "3", *SMALL]
    code, out, err, took = _signal_after(_start("train.py", *args), "epoch   1/3", sig)
    ok, what = _clean(code, out, err, 128 + sig, f"stopped by {signal.Signals(sig).name}; the same command resumes")
    again = _run("train.py", *args)
    epochs = [ln.split()[1] for ln in again[1].splitlines() if ln.startswith("epoch ")]
    resumed = again[0] == 0 and bool(epochs) and epochs[0] != "1/3"
    return ok and resumed and took < 3, f"{what} ({took:.1f} s to exit); rerun: exit {again[0]}, epochs {epochs}"


def stop_evaluate(work: Path, run: Path) -> tuple[bool, str]:
    args = ["--run", str(run), "--reports", str(work), "--run-id", "cut"]
    code, out, err, _ = _signal_after(_start("evaluate.py", *args), "evaluating", signal.SIGTERM)
    ok, what = _clean(code, out, err, 143, "stopped by SIGTERM; no report was published")
    return ok and not (work / "cut").exists(), what


def stop_predict(work: Path, run: Path) -> tuple[bool, str]:
    from mnist_ray import data

    images = work / "images.idx3-ubyte"
    x = data.load("mnist").test_x[:2000]
    images.write_bytes((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in x.shape) + x.tobytes())
    args = ["--input", str(images), "--run", str(run), "--output", str(work / "pred")]
    code, out, err, _ = _signal_after(_start("predict.py", *args), "predicting", signal.SIGTERM)
    ok, what = _clean(code, out, err, 143, "stopped by SIGTERM; nothing was published")
    return ok and not (work / "pred").exists(), what


def stop_export(work: Path, run: Path) -> tuple[bool, str]:
    args = ["--run", str(run), "--output", str(work / "export")]
    code, out, err, _ = _signal_after(_start("export.py", *args), "exporting", signal.SIGTERM)
    ok, what = _clean(code, out, err, 143, "stopped by SIGTERM; nothing was published")
    return ok and not (work / "export").exists(), what


def stop_tune(work: Path) -> tuple[bool, str]:
    args = [
        "--output",
        str(work),
        "--name",
        "sw",
        "--epochs",
        "2",
        *SMALL,
        "--num-samples",
        "2",
        "--optimizers",
        "adam",
    ]
    code, out, err, _ = _signal_after(_start("tune.py", *args), "trial ", signal.SIGTERM)
    return _clean(code, out, err, 143, "stopped by SIGTERM; rerun with --resume")


def one_name_two_jobs(work: Path) -> tuple[bool, str]:
    args = ["--preset", "smoke", "--name", "s", "--output", str(work)]
    first = _start("train.py", *args)
    time.sleep(1.0)
    second = _run("train.py", *args)
    first.communicate(timeout=300)
    ok, what = _clean(*second[:3], 2, "error: run s is in use by another job (host ")
    return (
        ok and f"pid {first.pid}" in what and first.returncode == 0,
        f"{what}; the first job: exit {first.returncode}",
    )


@contextlib.contextmanager
def _tmpfs(work: Path, size: str) -> Iterator[Path | None]:
    target = work / f"tmpfs-{size}"
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)]).returncode != 0:
        yield None
        return
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)])


def _fill(folder: Path, leave: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def full_output(work: Path) -> tuple[bool, str]:
    with _tmpfs(work, "600k") as out:
        if out is None:
            return False, "no tmpfs (needs root)"
        code, o, e, _ = _run("train.py", "--preset", "smoke", "--output", str(out))
        ok, what = _clean(code, o, e, 1, f"error: {out / 'mnist'}: no space left (")
        return ok and not list(out.iterdir()), what


def full_mid_run(work: Path) -> tuple[bool, str]:
    with _tmpfs(work, "8m") as out:
        if out is None:
            return False, "no tmpfs (needs root)"
        args = ["--output", str(out), "--name", "s", "--epochs", "3", *SMALL]
        proc, filler = _start("train.py", *args), None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch   1/3"):
                filler = _fill(out, 300_000)
                break
        o, e = proc.communicate(timeout=300)
        ok, what = _clean(proc.returncode, "".join(seen) + o, e, 1, f"error: {out / 's'}: no space left (")
        ok = ok and "lost worker" not in o + e
        if filler:
            filler.unlink()
        again = _run("train.py", *args)
        return ok and again[0] == 0, f"{what}; after freeing space: exit {again[0]}"


def full_reports(work: Path, run: Path) -> tuple[bool, str]:
    with _tmpfs(work, "2m") as reports:
        if reports is None:
            return False, "no tmpfs (needs root)"
        _fill(reports, 60_000)
        code, o, e, _ = _run("evaluate.py", "--run", str(run), "--reports", str(reports), "--run-id", "r")
        ok, what = _clean(code, o, e, 1, f"error: {reports / 'r'}: no space left (")
        return ok and not (reports / "r").exists(), what


@contextlib.contextmanager
def _listener(kind: str) -> Iterator[int]:
    """A live loopback port that is not Ray: HTTP, an SSH banner, silence, or an instant close."""
    import http.server

    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()
        return
    sock, held = socket.socket(), []
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                if kind == "ssh":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                conn.close() if kind == "close" else held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1]
    sock.close()


def wrong_address(work: Path, kind: str) -> tuple[bool, str]:
    with _listener(kind) as port:
        env = {**ENV, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        code, o, e, took = _run("train.py", "--preset", "smoke", "--output", str(work), env=env)
    ok, what = _clean(code, o, e, 2, f"error: RAY_ADDRESS points at 127.0.0.1:{port}, which ")
    return ok and took < 30 and not list(work.iterdir()), f"{what} ({took:.1f} s)"


def lr_range(work: Path) -> tuple[bool, str]:
    code, o, e, _ = _run("train.py", "--lr", "50", "--output", str(work))
    return _clean(code, o, e, 2, "error: lr must be in (0, 10], got 50")


def dangling_symlink(work: Path, run: Path) -> tuple[bool, str]:
    import pandas as pd

    folder = work / "in"
    folder.mkdir()
    (folder / "gone.png").symlink_to(folder / "moved.png")
    (folder / "note.txt").write_text("x")
    code, o, e, _ = _run("predict.py", "--input", str(folder), "--run", str(run), "--output", str(work / "p"))
    if code != 2:  # nothing readable at all is bad input; add one real image first
        return False, f"exit {code}"
    from PIL import Image

    from mnist_ray import data

    Image.fromarray(data.load("mnist").test_x[0]).save(folder / "digit.png")
    code, o, e, _ = _run("predict.py", "--input", str(folder), "--run", str(run), "--output", str(work / "p"))
    rows = pd.read_parquet(work / "p" / "predictions.parquet").set_index("source") if code == 0 else None
    reason = rows.loc[str(folder / "gone.png"), "error"] if rows is not None else ""
    return code == 0 and "dangling symlink" in str(reason), f"exit {code}: {reason}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ops-faults-") as tmp:
        root = Path(tmp)
        trained = root / "trained"
        _run("train.py", "--preset", "smoke", "--name", "m", "--output", str(trained))
        run = trained / "m"
        cases: dict[str, Callable[[Path], tuple[bool, str]]] = {
            "SIGTERM to train mid-epoch, then the same command": lambda w: stop_train(w, signal.SIGTERM),
            "SIGHUP to train mid-epoch, then the same command": lambda w: stop_train(w, signal.SIGHUP),
            "SIGTERM to a sweep": stop_tune,
            "SIGTERM to an evaluation": lambda w: stop_evaluate(w, run),
            "SIGTERM to a prediction": lambda w: stop_predict(w, run),
            "SIGTERM to an export": lambda w: stop_export(w, run),
            "two train jobs, one run name, 1 s apart": one_name_two_jobs,
            "--output on a full disk (600 KiB tmpfs)": full_output,
            "--output fills up mid-run, then space is freed": full_mid_run,
            "--reports on a full disk": lambda w: full_reports(w, run),
            "RAY_ADDRESS at an HTTP server": lambda w: wrong_address(w, "http"),
            "RAY_ADDRESS at an SSH server": lambda w: wrong_address(w, "ssh"),
            "RAY_ADDRESS at a port that accepts and says nothing": lambda w: wrong_address(w, "silent"),
            "RAY_ADDRESS at a port that closes at once": lambda w: wrong_address(w, "close"),
            "--lr 50": lr_range,
            "a dangling symlink in a predict input": lambda w: dangling_symlink(w, run),
        }
        results = []
        for name, case in cases.items():
            work = root / f"case{len(results)}"
            work.mkdir()
            start = time.monotonic()
            try:
                ok, detail = case(work)
            except Exception as exc:  # noqa: BLE001 - a case that breaks is a case that did not end cleanly
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results.append({"case": name, "clean": ok, "detail": detail, "seconds": round(time.monotonic() - start, 1)})
            print(f"{'clean' if ok else 'NOT CLEAN'}  {name}: {detail}", flush=True)
    clean = sum(r["clean"] for r in results)
    print(f"{clean} of {len(results)} ended cleanly", flush=True)
    common.save("ops_faults", {"command": "python bench/run_all.py ops_faults", "clean": clean, "cases": results})


if __name__ == "__main__":
    sys.path.insert(0, str(common.REPO))
    main()
