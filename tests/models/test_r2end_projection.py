"""The projection on real MiniLM embeddings of Beauty items: training lowers the loss and ranks better."""

from __future__ import annotations

import numpy as np
import torch

from r2end_core.config import ProjectConfig, R2endArgs
from r2end_core.eval.metrics import rank_users, ranking_metrics
from r2end_core.models.r2end import projection
from tests.conftest import catalogue_slice


def hr_at_10(f, users: torch.Tensor, items: torch.Tensor, targets: np.ndarray) -> float:
    u, i = projection.unit_vectors(users, f), projection.unit_vectors(items, f)
    return ranking_metrics(rank_users(lambda rows: u[rows] @ i.T, targets, len(items)), targets, len(items))["hr@10"]


def test_projection_learns_a_real_mapping(prepared_tables, minilm_encode):
    items = catalogue_slice(prepared_tables[1], 500)
    item_vectors = torch.from_numpy(minilm_encode(items.column("metadata_text").to_pylist()))
    # Users are noisy copies of their target item: a mapping f can learn and full ranking can score.
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, len(item_vectors), (256,), generator=generator)
    user_vectors = item_vectors[targets] + 0.05 * torch.randn(256, item_vectors.shape[1], generator=generator)
    cfg = ProjectConfig(model=R2endArgs(dim=64), negatives=20, batch_size=32, learning_rate=1e-3)
    torch.manual_seed(0)
    f = projection.Projection(item_vectors.shape[1], cfg.model.dim)
    optimizer = torch.optim.Adam(f.parameters(), lr=cfg.learning_rate)
    losses = [
        projection.train_epoch(f, optimizer, user_vectors, targets, item_vectors, cfg, generator)["info_nce"]
        for _ in range(5)
    ]
    assert losses[-1] < losses[0]
    assert hr_at_10(f, user_vectors, item_vectors, targets.numpy()) > 0.5
