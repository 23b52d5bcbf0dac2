"""The shared projection f (paper §3.4): user and item embeddings into one space for cosine retrieval.

    z_u = f(e_u), z_i = f(e_i)
    L = InfoNCE(cos(z_u, z_i+), cos(z_u, z_j) for j in sampled negatives; tau)
        + lambda * (|z_u| + |z_i+| + mean_j |z_j|)

Defaults follow the paper: output dim 512, 99 negatives, tau = 0.07, lambda = 0.5. The positive
is in InfoNCE's denominator (the usual form; the paper's Eq. 7 writes negatives only, which
rewards pushing the positive's similarity without bound).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2end_core import storage
from r2end_core.config import ProjectConfig


class Projection(nn.Module):
    """One linear map shared by users and items.

    >>> Projection(384, 512)(torch.zeros(2, 384)).shape
    torch.Size([2, 512])
    """

    def __init__(self, in_dim: int, out_dim: int = 512):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


def sample_negatives(
    positives: torch.Tensor, n_items: int, n_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """``[batch, n_negatives]`` item indices drawn uniformly from the catalogue, never the row's positive.

    >>> neg = sample_negatives(torch.tensor([0, 1]), 3, 50, torch.Generator().manual_seed(0))
    >>> neg.shape, bool((neg != torch.tensor([[0], [1]])).all())
    (torch.Size([2, 50]), True)
    """
    # Draw from n_items - 1 values and step over the positive: uniform over the other items.
    draws = torch.randint(0, n_items - 1, (len(positives), n_negatives), generator=generator)
    return draws + (draws >= positives[:, None]).long()


def info_nce(
    z_users: torch.Tensor, z_positives: torch.Tensor, z_negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over users of -log softmax of the positive's cosine among [positive, negatives].

    ``z_users`` and ``z_positives``: ``[batch, dim]``; ``z_negatives``: ``[batch, n_neg, dim]``.

    >>> u = torch.tensor([[1.0, 0.0]])
    >>> round(info_nce(u, u, torch.tensor([[[0.0, 1.0]]]), 1.0).item(), 4)  # -log(e / (e + 1))
    0.3133
    """
    users = F.normalize(z_users, dim=-1)
    positive = (users * F.normalize(z_positives, dim=-1)).sum(-1, keepdim=True)
    negatives = torch.einsum("bd,bnd->bn", users, F.normalize(z_negatives, dim=-1))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def l2_regulariser(
    z_users: torch.Tensor, z_positives: torch.Tensor, z_negatives: torch.Tensor, weight: float
) -> torch.Tensor:
    """``weight * (|z_u| + |z_i+| + mean_j |z_j|)``, averaged over the batch (paper Eq. 8).

    >>> reg = l2_regulariser(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2, 2) * 2.0, 0.5)
    >>> round(reg.item(), 4)  # 0.5 * (5 + 1 + 2.8284)
    4.4142
    """
    norms = z_users.norm(dim=-1) + z_positives.norm(dim=-1) + z_negatives.norm(dim=-1).mean(-1)
    return weight * norms.mean()


def projection_loss(
    projection: Projection,
    user_embeddings: torch.Tensor,
    item_embeddings: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    reg_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective for one batch: InfoNCE plus the L2 term (``reg_weight=0``: none).

    ``user_embeddings``: ``[batch, d]`` (e_u); ``item_embeddings``: the whole catalogue ``[n_items, d]``;
    ``positives``: ``[batch]`` and ``negatives``: ``[batch, n_neg]`` indices into it.
    """
    z_users = projection(user_embeddings)
    z_positives = projection(item_embeddings[positives])
    z_negatives = projection(item_embeddings[negatives])
    contrastive = info_nce(z_users, z_positives, z_negatives, temperature)
    regulariser = l2_regulariser(z_users, z_positives, z_negatives, reg_weight) if reg_weight else torch.zeros(())
    return contrastive + regulariser, {"info_nce": contrastive.item(), "l2": regulariser.item()}


def train_epoch(
    projection: Projection,
    optimizer: torch.optim.Optimizer,
    user_embeddings: torch.Tensor,
    positives: torch.Tensor,
    item_embeddings: torch.Tensor,
    cfg: ProjectConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """One pass over the training users in a random order; returns the mean loss terms."""
    projection.train()
    order = torch.randperm(len(user_embeddings), generator=generator)
    totals = {"info_nce": 0.0, "l2": 0.0}
    for start in range(0, len(order), cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        negatives = sample_negatives(positives[rows], len(item_embeddings), cfg.negatives, generator)
        loss, parts = projection_loss(
            projection,
            user_embeddings[rows],
            item_embeddings,
            positives[rows],
            negatives,
            cfg.temperature,
            cfg.reg_weight,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for name in totals:
            totals[name] += parts[name] * len(rows)
    return {name: total / len(order) for name, total in totals.items()}


def run_name(cfg: ProjectConfig, inputs: dict[str, str], storage_path: str) -> str:
    """The Ray Train run of a projection: the same settings and inputs give the same name, so a re-run
    resumes its run; ``epochs`` is left out, so raising it continues a finished run."""
    settings = {"project": cfg.model_dump(mode="json", exclude={"epochs"}), **inputs, "storage_path": storage_path}
    return f"project-{cfg.run_name}-{storage.digest(settings)}"


def user_samples(
    n_users: int, train_users: int | None, eval_users: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of the users that train f and of those scored; the scored users are the
    first ones of the same fixed permutation, so every variant and sample size sees the same users.

    >>> train, scored = user_samples(10, 6, 3, 0)
    >>> len(train), len(scored), set(scored) <= set(train)
    (6, 3, True)
    """
    order = np.random.default_rng(seed).permutation(n_users)
    return np.sort(order[:train_users]), np.sort(order[:eval_users])


def unit_vectors(embeddings: torch.Tensor, projection: Projection | None) -> torch.Tensor:
    """``f(e)`` (or ``e`` itself without a projection), scaled to unit length for cosine search."""
    with torch.no_grad():
        out = projection.eval()(embeddings) if projection is not None else embeddings
    return F.normalize(out, dim=-1)
