"""How the evaluation's 10k test images enter Ray Data: a pandas column of arrays against one Arrow tensor column.

    python -m bench.eval_input

Each run is a fresh process, as a job is: connect to a local Ray, build the dataset, map an identity batch
function over it, collect. 3 interleaved pairs; the seconds of building and of mapping + collecting. The
evaluation uses ``from_pandas``; ``from_arrow`` did not pay (bench/NOTES.md). Results:
bench/results/eval_input.json. About 1 minute on 2 cores.
"""

from __future__ import annotations

import sys

from bench import common

PAIRS = 3

PROBE = """
import json, sys, time
import numpy as np, pandas as pd, pyarrow as pa, ray
from mnist_ray import data
from mnist_ray.cluster import connection

connection.connect(num_cpus=2, dashboard=False)
arrays = data.load("mnist", None)
x, y = arrays.test_x, arrays.test_y
bounds = np.linspace(0, len(y), 5).astype(int)
start = time.perf_counter()
if sys.argv[1] == "pandas":
    frame = pd.DataFrame({"index": np.arange(len(y)), "label": y, "image": list(x)})
    ds = ray.data.from_pandas([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
else:
    from ray.data.extensions import ArrowTensorArray
    table = pa.table({"index": np.arange(len(y)), "label": y, "image": ArrowTensorArray.from_numpy(x)})
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])])
built = time.perf_counter()
rows = len(ds.map_batches(lambda b: {"index": b["index"]}, batch_size=1000, batch_format="numpy").to_pandas())
done = time.perf_counter()
print(json.dumps({"build_s": round(built - start, 2), "map_collect_s": round(done - built, 2), "rows": rows}))
"""


def probe(kind: str) -> dict:
    """One fresh process building the test set's dataset the ``kind`` way (pandas or arrow)."""
    return common.probe(PROBE, kind, timeout=300)


def main() -> None:
    runs: dict[str, list[dict]] = {"pandas": [], "arrow": []}
    for _ in range(PAIRS):
        for kind in runs:
            runs[kind].append(probe(kind))
            print(kind, runs[kind][-1], file=sys.stderr, flush=True)
    common.save(
        "eval_input",
        {
            "command": "python -m bench.eval_input",
            "runs": runs,
            "total_s_median": {
                kind: common.median([r["build_s"] + r["map_collect_s"] for r in rs]) for kind, rs in runs.items()
            },
        },
    )


if __name__ == "__main__":
    main()
