"""Full-item ranking spread over Ray tasks: the users x items scores of an evaluation (or of DLLM2Rec's teacher
rankings), in parts of users.

    record(layout, model, sets, rank=ranking.on_ray(cfg.resources))
    dllm2rec.teacher_rankings(teacher, users, catalogue, instances, k, rule, ranking.top_on_ray(cfg.resources))

Each task ranks a part of the users against the whole catalogue (``metrics.rank_vectors``, so the scores it
holds at once stay under ``metrics.CHUNK_SCORES``) and returns their ranks and ``MetricSums``; the driver adds
the sums. The item vectors go to the object store once. A part is a whole number of ranking chunks, so every
score is computed as in one process: the ranks are the same, the metrics up to the order of a float sum.
"""

from __future__ import annotations

import functools
import operator
import warnings

import numpy as np
import ray
import torch

from r2end_core.config import Resources
from r2end_core.eval import metrics

TASK_SCORES = 1 << 27  # scores one task computes (in chunks): ~0.5 GB of floats, seconds of work on a core


def in_task(compute, threads: int, *args):
    """``compute(*args)`` in a Ray task of ``threads`` CPUs (``ray.remote(num_cpus=threads)(in_task)``)."""
    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the task's CPUs; torch keeps its own count
    warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # the object store's are read-only
    return compute(*args)


def _in_parts(
    resources: Resources, compute, users, items, per_user: list, shared: list, task_scores: int, gpu: bool = False
) -> list:
    """``compute(users part, items, *per_user parts, *shared)`` for parts of the users, one Ray task each (items
    and ``shared`` put in the object store once); the parts' results in the users' order."""
    size, items_ref = part_size(len(items), task_scores=task_scores), ray.put(items)
    shared = [ray.put(value) for value in shared]
    gpus = 1 if gpu and resources.use_gpu else 0  # a GPU only for a compute that uses it
    task = ray.remote(num_cpus=resources.cpus_per_worker, num_gpus=gpus)(in_task)
    cut = lambda values, start: None if values is None else values[start : start + size]  # noqa: E731
    pending = [
        task.remote(
            compute,
            resources.cpus_per_worker,
            users[start : start + size],
            items_ref,
            *(cut(values, start) for values in per_user),
            *shared,
        )  # fmt: skip
        for start in range(0, len(users), size)
    ]
    return ray.get(pending)


def part_size(n_items: int, chunk_size: int = metrics.DEFAULT_CHUNK, task_scores: int = TASK_SCORES) -> int:
    """Users per task: whole ranking chunks (as ``rank_users`` cuts them), about ``task_scores`` scores.

    >>> part_size(12_101), part_size(1_000_000)
    (10240, 128)
    """
    chunk = max(1, min(chunk_size, metrics.CHUNK_SCORES // n_items))
    return chunk * max(1, task_scores // (chunk * n_items))


def on_ray(resources: Resources, task_scores: int = TASK_SCORES) -> metrics.Ranker:
    """A ``metrics.Ranker`` that ranks parts of the users in Ray tasks of ``resources.cpus_per_worker`` CPUs
    (and a GPU each with ``resources.use_gpu``)."""
    device = "cuda" if resources.use_gpu else "cpu"

    def rank(users, items, targets, exclude, tail):
        parts = _in_parts(
            resources, metrics.rank_vectors, users, items, [targets, exclude], [tail, device], task_scores, gpu=True
        )
        return np.concatenate([ranks for ranks, _ in parts]), functools.reduce(operator.add, [s for _, s in parts])

    return rank


def top_on_ray(resources: Resources, task_scores: int = TASK_SCORES) -> metrics.TopK:
    """A ``metrics.TopK`` that finds parts of the users' best items in Ray tasks (DLLM2Rec's teacher rankings:
    every training instance against the whole catalogue)."""

    def top(users, items, k, exclude):
        parts = _in_parts(resources, _top_items, users, items, [exclude], [k], task_scores)
        return np.concatenate([found for found, _ in parts]), np.concatenate([scores for _, scores in parts])

    return top


def _top_items(users, items, exclude, k):
    return metrics.top_items(users, items, k, exclude)
