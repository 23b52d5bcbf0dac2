"""The projection on real MiniLM embeddings of Beauty items: training lowers the loss and ranks better."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2end_core import projection
from r2end_core.config import ProjectConfig
from tests.conftest import catalogue_slice


def test_projection_learns_a_real_mapping(prepared_tables, minilm_encode):
    items = catalogue_slice(prepared_tables[1], 500)
    item_vectors = torch.from_numpy(minilm_encode(items.column("metadata_text").to_pylist()))
    # Users are noisy copies of their target item: a mapping f can learn and full ranking can score.
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, len(item_vectors), (256,), generator=generator)
    user_vectors = item_vectors[targets] + 0.05 * torch.randn(256, item_vectors.shape[1], generator=generator)
    cfg = ProjectConfig(dim=64, negatives=20, batch_size=32, learning_rate=1e-3)
    torch.manual_seed(0)
    f = projection.Projection(item_vectors.shape[1], cfg.dim)
    optimizer = torch.optim.Adam(f.parameters(), lr=cfg.learning_rate)
    losses = [projection.train_epoch(f, optimizer, user_vectors, targets, item_vectors, cfg, generator)["info_nce"]
              for _ in range(5)]
    assert losses[-1] < losses[0]
    scored = projection.evaluate(f, user_vectors, item_vectors, targets.numpy(), None, None)
    assert scored["users"] == 256 and scored["hr@10"] > 0.5


def test_item_mean_and_no_projection_rank_by_cosine():
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    users = torch.from_numpy(projection.mean_item_embeddings([np.array([0]), np.array([0, 1])], items.numpy()))
    scored = projection.evaluate(None, users, items, np.array([0, 2]), None, None)
    assert scored["hr@5"] == 1.0 and scored["ndcg@5"] == 1.0
    # Masking user 0's history (item 0) lifts their target (item 1) from third place to second.
    unmasked = projection.evaluate(None, users[:1], items, np.array([1]), None, None)
    masked = projection.evaluate(None, users[:1], items, np.array([1]), [np.array([0])], None)
    assert unmasked["ndcg@5"] == 0.5 and masked["ndcg@5"] == pytest.approx(1 / np.log2(3))
