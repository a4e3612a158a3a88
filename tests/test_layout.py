"""``auto``: the layout a job takes from the cluster's nodes, explicit values, resumes and autoscaling clusters."""

from __future__ import annotations

import pytest

from mnist_ray.cluster import layout
from mnist_ray.cluster.layout import Node
from mnist_ray.errors import ConfigError
from mnist_ray.jobs import evaluate, train
from mnist_ray.settings import cli
from mnist_ray.settings.config import TrainConfig, load_with_request

CPU2, CPU16, GPU = Node(2, 0), Node(16, 0), Node(8, 1)
AUTO = layout.Request(frozenset(layout.FIELDS), frozenset(layout.GPU_RECIPE))


def resolved(nodes: list[Node], cfg: TrainConfig | None = None, req: layout.Request = AUTO) -> tuple[TrainConfig, str]:
    return layout.resolve(cfg or TrainConfig(), req, nodes)


def test_one_machine_trains_in_one_process_with_all_its_cores():
    cfg, line = resolved([CPU2])
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu) == (1, 2, False)
    assert line == "auto: 1 worker x 2 CPUs (1 node, no GPU)"


def test_a_cpu_cluster_is_data_parallel_across_its_nodes():
    cfg, line = resolved([CPU2, CPU2])
    assert (cfg.num_workers, cfg.cpus_per_worker) == (2, 2) and line == "auto: 2 workers x 2 CPUs (2 nodes, no GPU)"
    cfg, line = resolved([CPU2, CPU16])  # uneven nodes: the smallest node's CPUs per worker, as many as fit
    assert (cfg.num_workers, cfg.cpus_per_worker) == (8, 2) and "batch 128 does not split over 9" in line
    cfg, _ = resolved([Node(64, 0)])  # one process of 64 threads scales worse: workers of at most 16
    assert (cfg.num_workers, cfg.cpus_per_worker) == (4, layout.MAX_THREADS)
    cfg, _ = resolved([Node(0, 0), CPU16])  # a head that runs no tasks (num-cpus 0) is no place for a worker
    assert (cfg.num_workers, cfg.cpus_per_worker) == (1, 16)


def test_gpus_get_one_worker_each_and_the_gpu_recipe_unless_a_recipe_was_set():
    cfg, line = resolved([CPU2, GPU, GPU])
    assert (cfg.use_gpu, cfg.num_workers, cfg.cpus_per_worker) == (True, 2, 1)
    assert (cfg.batch_size, cfg.lr, cfg.epochs) == (1024, 1.1e-2, 30)
    assert line == "auto: 2 workers x 1 CPU + 1 GPU (3 nodes, 2 GPUs; gpu preset's batch, lr and epochs)"
    own = layout.Request(AUTO.auto, frozenset({"lr", "epochs"}))  # --batch-size given: the user's recipe stands
    cfg, _ = resolved([GPU], TrainConfig(batch_size=256), own)
    assert (cfg.use_gpu, cfg.batch_size, cfg.lr, cfg.epochs) == (True, 256, TrainConfig().lr, TrainConfig().epochs)


def test_flags_presets_and_files_are_explicit_and_win():
    cfg, req = load_with_request("default", None, {"num_workers": 3, "use_gpu": layout.AUTO, "batch_size": 96})
    assert req.auto == {"use_gpu", "cpus_per_worker"} and not req.gpu_recipe
    cfg, line = layout.resolve(cfg, req, [CPU16])
    assert (cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu) == (3, 5, False)  # 3 workers fit 5 CPUs each
    assert load_with_request("gpu")[1].auto == {"cpus_per_worker"}  # the preset sets the GPU and the workers
    explicit = load_with_request("default", None, {k: v for k, v in zip(layout.FIELDS, (2, 1, False), strict=True)})
    assert layout.resolve(*explicit, [GPU]) == (TrainConfig(num_workers=2), None)  # nothing auto: no line


def test_the_flags_take_auto_a_count_or_a_switch(capsys):
    assert train.parse([]).layout == AUTO
    settings = train.parse(["--num-workers", "auto", "--use-gpu", "--cpus-per-worker", "3"])
    assert settings.layout.auto == {"num_workers"} and settings.cfg.use_gpu and settings.cfg.cpus_per_worker == 3
    assert train.parse(["--no-use-gpu"]).layout.auto == {"num_workers", "cpus_per_worker"}
    assert train.parse(["--use-gpu", "no"]).cfg.use_gpu is False
    with pytest.raises(SystemExit):
        train.parse(["--num-workers", "many"])
    assert "expected auto or int, got 'many'" in capsys.readouterr().err
    opts = cli.build(evaluate.EvalOptions, evaluate_args([]))
    assert (opts.use_gpu, opts.actors) == ("auto", "auto")
    assert layout.inference(opts.use_gpu, opts.actors, [CPU2, CPU2])[:2] == (False, 4)
    assert layout.inference(opts.use_gpu, opts.actors, [CPU2, GPU, GPU])[:2] == (True, 2)
    assert layout.inference(False, 3, [GPU]) == (False, 3, None)
    with pytest.raises(ConfigError, match=r"actors must be in \[1, 1024\]"):
        cli.build(evaluate.EvalOptions, evaluate_args(["--actors", "0"]))


def evaluate_args(argv: list[str]):
    p = cli.parser("evaluate")
    cli.add_fields(p, evaluate.EvalOptions, evaluate.EvalOptions())
    return p.parse_args(argv)


def test_a_resumed_run_keeps_its_layout_and_recipe():
    previous = TrainConfig(num_workers=2, cpus_per_worker=1, use_gpu=True, batch_size=1024, lr=1.1e-2, epochs=30)
    cfg, req = layout.adopt(TrainConfig(), AUTO, previous)
    assert cfg == previous and req == layout.Request()  # nothing left for the cluster to decide
    more = layout.Request(AUTO.auto, frozenset({"batch_size", "lr"}))  # --epochs 40: a longer run, same layout
    cfg, _ = layout.adopt(TrainConfig(epochs=40), more, previous)
    assert (cfg.num_workers, cfg.use_gpu, cfg.batch_size, cfg.epochs) == (2, True, 1024, 40)
    assert layout.adopt(TrainConfig(), AUTO, None) == (TrainConfig(), AUTO)  # a new run


def test_an_autoscaling_cluster_needs_the_layout_spelled_out():
    with pytest.raises(ConfigError, match="--wait-for-resources: auto sees only the nodes that exist now"):
        train.parse(["--wait-for-resources"])
    settings = train.parse(["--wait-for-resources", "--num-workers", "4", "--use-gpu"])
    assert settings.layout.auto == set() and settings.cfg.cpus_per_worker == 1


def test_the_suite_ray_is_one_node_of_two_cpus(ray_session):
    cfg, line = layout.resolve(TrainConfig(), AUTO)  # the nodes Ray reports
    assert (cfg.num_workers, cfg.cpus_per_worker) == (1, 2) and line == "auto: 1 worker x 2 CPUs (1 node, no GPU)"
