"""What every stage entrypoint shares: command-line parsing and joining a Ray cluster."""

from __future__ import annotations

import argparse
import os
from typing import Callable

import ray

from r2end_core.config import PipelineConfig, RayConfig, load_config
from r2end_core.storage import absolute


def parse_config(description: str) -> PipelineConfig:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/beauty-sample.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override one config field"
    )
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    # Ray workers run in other folders: make local paths absolute once, here.
    cfg.storage_path = absolute(cfg.storage_path)
    cfg.prepare.dataset_path = absolute(cfg.prepare.dataset_path)
    for source in cfg.embed.teacher_outputs or []:
        source.folder = absolute(source.folder)
        source.same_users_as = source.same_users_as and absolute(source.same_users_as)
    cfg.generate.extends = [absolute(folder) for folder in cfg.generate.extends]
    return cfg


def run_stage(description: str, stage: Callable[[PipelineConfig], object]) -> object:
    """A stage entrypoint: parse ``--config``/``--set``, join or start Ray, run the stage."""
    cfg = parse_config(description)
    connect(cfg.ray)
    return stage(cfg)


# Ray Serve's throughput mode (Ray >= 2.55): the ingress replica takes HTTP itself (no proxy hop),
# replicas talk over gRPC, user code runs on the replica's own event loop. On 2 cores it cuts the
# endpoint's latency over in-process by about a third (bench/serving_cpu.py). Every process of the
# cluster reads it at start, so it is set before a local cluster starts (on a cluster: its env).
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def start_local(num_cpus: int | None, **init_options) -> None:
    """A fresh local cluster (``address="local"`` never joins a stale one left by ``ray start``)."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=num_cpus, **init_options)


def connect(cfg: RayConfig) -> None:
    """Join the configured cluster (or RAY_ADDRESS), else start a fresh local one."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        start_local(cfg.num_cpus)
