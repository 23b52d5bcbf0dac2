"""cluster.yaml must pass Ray's own autoscaler validation (the same check `ray up` runs)."""

import copy
import shlex
from pathlib import Path

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid():
    validate_config(prepare_config(copy.deepcopy(CLUSTER)))


def test_cluster_shape():
    gpu = CLUSTER["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 8
    assert CLUSTER["docker"]["image"].startswith("rayproject/ray:2.60") and "-gpu" in CLUSTER["docker"]["image"]
    assert CLUSTER["idle_timeout_minutes"] > 0
    (install,) = CLUSTER["setup_commands"]  # every node: the GPU lock exactly, then r2end without dependencies
    assert "--no-deps -r locks/pylock.gpu.toml" in install and install.endswith("pip install -q --no-deps -e .")


def test_the_dashboard_listens_on_the_heads_loopback_only():
    """Ray's job API runs whatever it is sent: reachable only through ``ray dashboard``'s SSH tunnel."""
    (start,) = [cmd for cmd in CLUSTER["head_start_ray_commands"] if "ray start --head" in cmd]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


def test_every_node_starts_ray_with_the_serving_environment():
    """Serve's throughput mode and HAProxy ingress are read as each node's processes start."""
    from ray_jobs.runtime import SERVE_ENV

    exported = " ".join(f"{k}={shlex.quote(v)}" for k, v in SERVE_ENV.items())
    for commands in (CLUSTER["head_start_ray_commands"], CLUSTER["worker_start_ray_commands"]):
        (start,) = [cmd for cmd in commands if "ray start" in cmd]
        assert start.startswith(f"export {exported};")


def test_the_documented_local_serve_run_sets_the_same_environment():
    """A local ``serve run`` as README and serve_config.yaml write it gets the HAProxy timeouts too (without them,
    Serve's defaults: a client may hold a connection for an hour)."""
    from ray_jobs.runtime import SERVE_ENV

    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "serve_app" / "serve_config.yaml"):
        (line,) = [line for line in doc.read_text().replace("\\\n", " ").splitlines() if " serve run " in line]
        assert all(f"{k}={shlex.quote(v)}" in line for k, v in SERVE_ENV.items()), doc.name


def test_validation_catches_a_misspelt_key():
    broken = copy.deepcopy(CLUSTER)
    broken["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(ValidationError, match="max_worker"):
        validate_config(prepare_config(broken))


def test_every_node_authenticates_with_the_token_mounted_on_it():
    """Token auth on every node: without the shared secret no process joins, submits or reads the cluster."""
    token = "/home/ray/.ray/auth_token"
    assert CLUSTER["file_mounts"][token] == "~/.ray/auth_token"  # the user's own, made by ray get-auth-token
    for commands in (CLUSTER["head_start_ray_commands"], CLUSTER["worker_start_ray_commands"]):
        (start,) = [cmd for cmd in commands if "ray start" in cmd]
        assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token};" in start
        assert start.index("RAY_AUTH_MODE=token") < start.index("ray start")
