"""Ray Train in one place, for every model's training loop (SASRec, distill, project).

The driver calls ``fit``; the loop, on each worker, calls ``worker`` first, ``restore`` (or
``restored_folder``) to resume, and ``report`` after each epoch or checkpoint interval. A run is named by
its settings, so the same settings resume the same run; rank 0's latest report is also written to
``progress.json`` in the run's folder, which the driver shows as it comes.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from r2end_core import storage
from r2end_core.config import Resources
from r2end_core.layout import Layout

log = logging.getLogger("r2end")
STATE_FILE = "state.pt"  # rank 0's state: tensors and plain values only (loaded with weights_only=True)
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device


def worker(config: dict) -> Worker:
    """Call first in a loop: torch threads (Ray sets OMP_NUM_THREADS=1 in workers), this worker's place."""
    torch.set_num_threads(config["_cpus"])
    context = ray.train.get_context()
    return Worker(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())


def restore() -> dict | None:
    """The state the last checkpoint holds (None on a fresh run)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), weights_only=True)


@contextmanager
def restored_folder():
    """The last checkpoint's folder as a local path (None on a fresh run), for loops that save their own."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield folder


def report(config: dict, metrics: dict, state: dict | None = None, save: Callable[[str], None] | None = None) -> None:
    """Report ``metrics`` from every worker; with ``state`` (kept from rank 0) or ``save`` (called on every
    rank with a folder to write into) as a checkpoint."""
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:  # every report of this attempt, for the driver to show
        config.setdefault("_reports", []).append(metrics)
        storage.write_json(config["_reports"], config["_progress"])
    if state is None and save is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        if save is not None:
            save(folder)
        if state is not None and rank == 0:
            torch.save(state, os.path.join(folder, STATE_FILE))
        has_files = bool(os.listdir(folder))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if has_files else None)


def fit(
    loop: Callable[[dict], None],
    config: dict,
    *,
    name: str,
    layout: Layout,
    resources: Resources,
    num_workers: int = 1,
    max_failures: int = 0,
    describe: Callable[[dict], str] = str,
) -> ray.train.Result:
    """Run ``loop`` on ``num_workers`` Ray Train workers (DDP over gloo on CPU) as the run ``name``, keeping
    its latest checkpoint; a worker's death restarts the workers from it, up to ``max_failures`` times. Shows
    each new report as ``describe(metrics)``."""
    progress = storage.join(layout.ray_train, name, PROGRESS_FILE)
    trainer = TorchTrainer(
        loop,
        train_loop_config={**config, "_cpus": resources.cpus_per_worker, "_progress": progress},
        torch_config=None if resources.use_gpu else TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=resources.use_gpu, resources_per_worker={"CPU": resources.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=layout.ray_train,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    done = threading.Event()
    watcher = threading.Thread(target=_show_progress, args=(progress, describe, done), daemon=True)
    watcher.start()
    try:
        with own_sigint_handler():
            return trainer.fit()
    finally:
        done.set()
        watcher.join()


@contextmanager
def own_sigint_handler():
    """Ray Train's ``fit`` installs a SIGINT handler (Ctrl-C aborts the run) and leaves it installed, so a
    later stage in the same process (the pipeline's endpoint) would never see KeyboardInterrupt: put back
    the handler that was there before."""
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _show_progress(path: str, describe: Callable[[dict], str], done: threading.Event) -> None:
    shown = storage.read_json(path) if storage.exists(path) else []  # an earlier attempt's reports
    while True:
        finished = done.wait(2.0)
        reports = storage.read_json(path) if storage.exists(path) else []
        new = reports if reports[: len(shown)] != shown else reports[len(shown) :]  # a new attempt starts over
        for report in new:
            log.info("  " + describe(report))
        shown = reports
        if finished:
            return


def final_state(result: ray.train.Result) -> dict:
    """The state in a finished run's last checkpoint."""
    with result.checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
