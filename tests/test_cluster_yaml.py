"""Static checks of the AWS cluster-launcher config ``cluster.yaml``; nothing here starts Ray or calls AWS.

The file is validated the way ``ray up`` validates it (the installed Ray's ``ray-schema.json``, then
``prepare_config`` + ``validate_config``), and then held to this project's own rules: a CPU head, GPU
workers that scale from zero, the project installed on every node, and the dashboard, job server and
GCS never exposed to the internet.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"

# EC2 instance families with NVIDIA GPUs and x86_64 CPUs (the AMI is x86_64; g5g is Arm, so not here).
GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"}
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def raw() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(raw: str) -> dict:
    loaded = yaml.safe_load(raw)
    assert isinstance(loaded, dict), "cluster.yaml must be a YAML mapping"
    return loaded


def _family(node_type: dict) -> str:
    return node_type["node_config"]["InstanceType"].split(".")[0]


def _workers(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _ray_start(commands: list[str]) -> list[str]:
    return [c for c in commands if "ray start" in c]


def test_matches_installed_ray_schema(config):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_passes_ray_up_validation(config):
    # What `ray up` does before talking to AWS: merge aws/defaults.yaml, then validate (this also checks
    # that head_node_type is declared and that the min_workers sum fits under max_workers).
    validate_config(prepare_config(copy.deepcopy(config)))


def test_provider_is_aws_us_west_2(config):
    provider = config["provider"]
    assert provider["type"] == "aws"
    assert provider["region"] == "us-west-2"
    zones = provider["availability_zone"].split(",")
    assert zones and all(z.strip().startswith("us-west-2") for z in zones), zones


def test_head_is_a_declared_cpu_node(config):
    head = config["available_node_types"].get(config["head_node_type"])
    assert head is not None, f"head_node_type {config['head_node_type']!r} is not in available_node_types"
    assert head["resources"].get("GPU", 0) == 0, "the always-on head should not be a GPU node"
    assert _family(head) not in GPU_FAMILIES, head["node_config"]["InstanceType"]


def test_has_a_gpu_worker_type_that_can_scale_up(config):
    assert config["max_workers"] >= 1
    gpu_types = {
        name: t
        for name, t in _workers(config).items()
        if t["resources"].get("GPU", 0) > 0 and t.get("max_workers", 0) >= 1
    }
    assert gpu_types, "need a worker node type with resources.GPU > 0 and max_workers >= 1"
    for name, t in gpu_types.items():
        assert t.get("min_workers", 0) <= t["max_workers"], name


def test_worker_instance_types_are_gpu_families(config):
    workers = _workers(config)
    assert workers
    for name, t in workers.items():
        assert _family(t) in GPU_FAMILIES, f"{name}: {t['node_config']['InstanceType']} is not a GPU instance"


def test_nodes_boot_from_a_pinned_ami(config):
    for name, t in config["available_node_types"].items():
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", t["node_config"].get("ImageId", "")), name


def test_gpu_workers_can_write_checkpoints_to_s3(config):
    # Ray attaches its default instance profile to the head only; workers need their own for S3 storage.
    for name, t in _workers(config).items():
        assert t["node_config"].get("IamInstanceProfile"), f"{name} has no IAM instance profile"


def test_project_is_copied_and_installed(config):
    assert config["file_mounts"].get("~/mnist_ray") == "."
    installs = [c for c in config["setup_commands"] if "pip install" in c and "mnist_ray" in c]
    assert installs, "setup_commands must pip install the project"
    assert any(re.search(r"-e\s+~/mnist_ray\b", c) for c in installs), installs
    assert any("-c ~/mnist_ray/constraints.txt" in c for c in installs), installs


def test_local_state_is_not_uploaded(config):
    excluded = set(config["rsync_exclude"])
    assert {".venv", ".git", "runs", "reports"} <= excluded, excluded


def test_head_dashboard_is_bound_to_localhost(config):
    heads = [c for c in _ray_start(config["head_start_ray_commands"]) if "--head" in c]
    assert len(heads) == 1, config["head_start_ray_commands"]
    assert "--dashboard-host=127.0.0.1" in heads[0]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in heads[0]
    assert "--port=6379" in heads[0]


def test_no_start_command_listens_on_all_interfaces(config):
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "0.0.0.0" not in command, command


def test_workers_join_the_head(config):
    starts = _ray_start(config["worker_start_ray_commands"])
    assert len(starts) == 1 and "--address=$RAY_HEAD_IP:6379" in starts[0], config["worker_start_ray_commands"]


def test_token_auth_on_every_node(config):
    starts = _ray_start(config["head_start_ray_commands"]) + _ray_start(config["worker_start_ray_commands"])
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command, command
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_security_group_opens_nothing_to_the_world(config):
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        assert not cidrs & WORLD, f"rule open to the internet: {rule}"


def test_every_top_level_section_is_commented(raw):
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"([A-Za-z_]+):", line)
        if match:
            previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
            assert previous.startswith("#"), f"top-level key {match.group(1)!r} has no comment above it"


def _usage_job(raw: str) -> list[str]:
    """The `ray job submit ... -- python jobs/train.py ...` example in the header comments, as argv."""
    lines = [ln.lstrip("#").strip() for ln in raw.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("ray job submit"))
    command = ""
    for ln in lines[start:]:
        command += " " + ln.rstrip("\\").strip()
        if not ln.endswith("\\"):
            break
    return command.split(" -- python jobs/train.py ", 1)[1].split()


def test_usage_example_is_a_valid_train_command_with_everything_on_s3(raw):
    from mnist_ray.jobs import train

    settings = train.parse(_usage_job(raw))
    cfg, opts, after = settings.cfg, settings.opts, settings.after
    assert cfg.use_gpu and cfg.num_workers == 4 and opts.wait_for_resources and after.evaluate
    assert not settings.layout.auto  # an autoscaling cluster: auto cannot see the GPU nodes yet
    assert (
        opts.output.startswith("s3://")
        and opts.folder.checkpoints.startswith("s3://")
        and after.reports.startswith("s3://")
    )
