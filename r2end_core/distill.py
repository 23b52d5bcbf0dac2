"""Reasoning distillation (paper §3.2): the student learns history text -> the teacher's target embedding.

    e_u   = Enc_S(H_u)                  the student on the user's raw history text
    e_u^R = Enc(M_target ⊕ R_u)         the target (see r2end_core.embeddings)
    L     = mean_u |e_u - e_u^R|^2

The pieces here are plain functions; ``ray_jobs/distill.py`` runs them under Ray Train + DeepSpeed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from r2end_core.config import DistillConfig
from r2end_core.embeddings import to_matrix

#: distill.target -> (row kind in the targets table, rejection-sampled users only)
TARGET_ROWS = {
    "oracle": ("oracle", False),
    "unguided_all": ("unguided", False),
    "unguided_grounded": ("unguided", True),
    "metadata": ("metadata", False),
}


def select_targets(targets: pa.Table, target: str) -> tuple[list[str], np.ndarray]:
    """(user ids, ``[users, dim]`` target embeddings) for one ``distill.target`` setting."""
    kind, accepted_only = TARGET_ROWS[target]
    rows = targets.filter(pc.equal(targets["target"], kind))
    if accepted_only:
        rows = rows.filter(pc.fill_null(rows["accepted"], False))
    if rows.num_rows == 0:
        raise ValueError(f"distill.target={target}: the targets table has no '{kind}' rows"
                         + (" accepted by rejection sampling" if accepted_only else "") + "; run the embed stage")
    return rows.column("user_id").to_pylist(), to_matrix(rows["embedding"])


def split_holdout(user_ids: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the users that train the student and of those held out to measure it. Which
    users are held out depends on the set of ids, not on their order, so runs on the same users
    (say, two teachers' answers) train and measure on the same ones.

    >>> train, held = split_holdout(list("abcdefghij"), 0.2, 0)
    >>> len(train), len(held), sorted(set(train) | set(held)) == list(range(10))
    (8, 2, True)
    >>> [list("abcdefghij")[i] for i in held] == sorted(list("jihgfedcba")[i] for i in split_holdout(list("jihgfedcba"), 0.2, 0)[1])
    True
    """
    order = np.argsort(user_ids, kind="stable")[np.random.default_rng(seed).permutation(len(user_ids))]
    n_held = int(round(fraction * len(user_ids)))
    if n_held >= len(user_ids):
        raise ValueError(f"holdout_fraction={fraction} leaves no user to distill from ({len(user_ids)} users)")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def batch_rows(n_rows: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the same
    batches from the step it stopped at.

    >>> [b.tolist() for b in batch_rows(5, 2, 0, 0)] == [b.tolist() for b in batch_rows(5, 2, 0, 0)]
    True
    >>> [len(b) for b in batch_rows(5, 2, 0, 0)]
    [2, 2, 1]
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def distillation_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared L2 distance per user, averaged over users.

    >>> distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item()
    2.0
    """
    return (student.float() - target.float()).pow(2).sum(-1).mean()


def distances(student: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: L2 distance and cosine similarity between student and target embeddings.

    >>> l2, cos = distances(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]))
    >>> round(float(l2[0]), 4), float(cos[0])
    (2.2361, 0.0)
    """
    l2 = np.linalg.norm(student - target, axis=1)
    cos = (student * target).sum(1) / (np.linalg.norm(student, axis=1) * np.linalg.norm(target, axis=1))
    return l2, cos


def deepspeed_config(cfg: DistillConfig, world_size: int) -> dict:
    """DeepSpeed settings for one run: the global batch split evenly across workers, no fp16 (CPU
    has none); the optimizer is a torch one passed in, so no DeepSpeed op needs compiling."""
    if cfg.batch_size % world_size:
        raise ValueError(f"distill.batch_size={cfg.batch_size} does not split over {world_size} workers")
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
