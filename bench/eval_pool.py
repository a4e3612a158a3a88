"""Where the evaluation scores: Ray tasks (kept) against the actor pool they replaced.

    python -m bench.eval_pool

Each run is a fresh process, as a job is: connect to a local Ray (2 CPUs), then evaluate the default run's best
checkpoint four times into a temporary folder (``evaluation.evaluate_to_report``, the job's whole path but the
imports and ``ray.init``). The first call is what one evaluation job pays; the next three are what a process that
evaluates again pays (the test suite, the comparison of several runs, predictions after an evaluation). 3
interleaved pairs; the seconds of scoring (``scoring.score``) and of the whole call. Results:
bench/results/eval_pool.json. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import sys

from bench import common

PAIRS = 3
CALLS = 4

PROBE = """
import json, sys, tempfile, time
from mnist_ray.cluster import connection
from mnist_ray.inference import evaluation, scoring, sources

connection.connect(num_cpus=2, dashboard=False)
score, spans = scoring.score, []

def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return score(*args, **kwargs, pool=sys.argv[2])
    finally:
        spans.append(round(time.perf_counter() - start, 2))

scoring.score = timed
calls = []
for i in range(int(sys.argv[3])):
    start = time.perf_counter()
    evaluation.evaluate_to_report(sys.argv[1], tempfile.mkdtemp(), f"pool-{i}")
    calls.append(round(time.perf_counter() - start, 2))
print(json.dumps({"score_s": spans, "call_s": calls}))
"""


def probe(checkpoint: str, pool: str) -> dict:
    """One fresh process evaluating ``checkpoint`` CALLS times with scoring in ``pool`` (tasks or actors)."""
    return common.probe(PROBE, checkpoint, pool, str(CALLS))


def main() -> None:
    run_dir = common.WORK / "runs" / "cnn_default"
    if not (run_dir / "best_checkpoint" / "model.pt").is_file():
        common.train("cnn_default")
    checkpoint = str(run_dir / "best_checkpoint" / "model.pt")
    runs: dict[str, list[dict]] = {"tasks": [], "actors": []}
    for _ in range(PAIRS):
        for pool in runs:
            runs[pool].append(probe(checkpoint, pool))
            print(pool, runs[pool][-1], file=sys.stderr, flush=True)
    common.save(
        "eval_pool",
        {
            "command": "python -m bench.eval_pool",
            "runs": runs,
            "first_call_s_median": {pool: common.median([r["call_s"][0] for r in rs]) for pool, rs in runs.items()},
            "later_call_s_median": {
                pool: common.median([c for r in rs for c in r["call_s"][1:]]) for pool, rs in runs.items()
            },
            "later_score_s_median": {
                pool: common.median([c for r in rs for c in r["score_s"][1:]]) for pool, rs in runs.items()
            },
        },
    )


if __name__ == "__main__":
    main()
