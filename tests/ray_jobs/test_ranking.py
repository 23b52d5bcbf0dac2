import numpy as np
import pytest

from r2end_core.config import Resources
from r2end_core.eval import metrics
from ray_jobs import ranking


@pytest.mark.usefixtures("ray_cluster")
def test_ranking_on_ray_equals_one_process():
    rng = np.random.default_rng(0)
    n_users, n_items = 5000, 3000
    users = rng.standard_normal((n_users, 16)).astype(np.float32)
    items = rng.standard_normal((n_items, 16)).astype(np.float32)
    targets = rng.integers(0, n_items, n_users)
    exclude = [rng.integers(0, n_items, rng.integers(0, 30)) for _ in range(n_users)]
    tail = metrics.long_tail_mask(rng.zipf(1.5, n_items))
    task_scores = 2 * metrics.DEFAULT_CHUNK * n_items  # parts of two chunks: three tasks, the last one short
    assert ranking.part_size(n_items, task_scores=task_scores) == 2048

    ranks, sums = ranking.on_ray(Resources(cpus_per_worker=1), task_scores)(users, items, targets, exclude, tail)
    expected_ranks, expected = metrics.rank_vectors(users, items, targets, exclude, tail)

    np.testing.assert_array_equal(ranks, expected_ranks)
    assert sums.metrics() == pytest.approx(expected.metrics(), rel=1e-12)  # NDCG summed in another order
    assert sums.users == n_users and sums.metrics()["hr@20"] > 0


@pytest.mark.usefixtures("ray_cluster")
def test_top_items_on_ray_equal_one_process():
    rng = np.random.default_rng(1)
    users, items = rng.standard_normal((3000, 8)).astype(np.float32), rng.standard_normal((900, 8)).astype(np.float32)
    exclude = [rng.integers(0, 900, rng.integers(0, 20)) for _ in range(3000)]
    found, scores = ranking.top_on_ray(Resources(cpus_per_worker=1), 1024 * 900)(users, items, 10, exclude)
    expected = metrics.top_items(users, items, 10, exclude)
    np.testing.assert_array_equal(found, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    assert not any(set(f) & set(e.tolist()) for f, e in zip(found, exclude))
