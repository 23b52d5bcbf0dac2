"""Data-parallel batches that keep every rank in step.

Each rank builds the same global batches (same seed), takes its share of each, and so runs the same
number of steps: with DDP or DeepSpeed a rank that ran out of batches first would leave the others
waiting in an all-reduce for ever. A global batch smaller than the number of ranks (the last one of an
epoch, say) would leave a rank without rows, so it joins the batch before it. Each rank scales its
mean loss by its share of the global batch, so that the all-reduced gradient is the gradient of the
global batch's mean loss, whatever the split.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed


def cut(order: np.ndarray, batch_size: int, world: int = 1) -> list[np.ndarray]:
    """``order`` in consecutive batches of ``batch_size``, the last one joined to the one before if it has
    fewer rows than ``world``.

    >>> [b.tolist() for b in cut(np.arange(5), 2, world=2)]
    [[0, 1], [2, 3, 4]]
    >>> [b.tolist() for b in cut(np.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
    """
    return join_small_tail([order[i : i + batch_size] for i in range(0, len(order), batch_size)], world)


def join_small_tail(batches: list[np.ndarray], world: int) -> list[np.ndarray]:
    """The batches, with a last one smaller than ``world`` joined to the one before."""
    if len(batches) > 1 and len(batches[-1]) < world:
        batches = [*batches[:-2], np.concatenate(batches[-2:])]
    if min(map(len, batches)) < world:
        raise ValueError(f"batches of {min(map(len, batches))} rows cannot give each of {world} workers a row")
    return batches


def share(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s rows of a global batch (never empty for a batch from ``cut``).

    >>> share(np.arange(5), 1, 2).tolist()
    [1, 3]
    """
    return batch[rank::world]


def loss_scale(local_count: int, global_count: int, world: int) -> float:
    """Factor for a rank's mean loss so that averaging gradients over ranks gives the global mean's.

    >>> loss_scale(3, 5, 2), loss_scale(4, 4, 1)
    (1.2, 1.0)
    """
    return local_count * world / global_count


def average_gradients(parameters, world: int) -> None:
    """Average the gradients of parameters that no data-parallel wrapper holds (an auxiliary loss's) over
    the ``world`` ranks, as DDP does for the model's; a parameter without a gradient counts as zero."""
    if world == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        torch.distributed.all_reduce(parameter.grad)
        parameter.grad /= world
