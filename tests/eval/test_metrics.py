"""Ranking metrics against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from r2end_core.eval.metrics import (
    MetricSums,
    Ranking,
    format_table,
    long_tail_mask,
    rank_users,
    ranking_metrics,
    target_ranks,
)


def evaluate_ranking(score_fn, targets, n_items, exclude=None, tail_items=None, ks=(5, 10, 20), chunk_size=1024):
    """Every user ranked, then the metrics: what ``eval.evaluate`` does with a model's scores."""
    ranking = rank_users(score_fn, targets, n_items, exclude, max(ks), chunk_size)
    return ranking_metrics(ranking, targets, n_items, tail_items, ks)


# Three users, five items. Worked by hand:
#   user 0: target 2 has two items above it       -> rank 2
#   user 1: target 3 is the top score              -> rank 0
#   user 2: all scores tie (pessimistic)           -> rank 4
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.1, 0.0],
        [0.1, 0.5, 0.2, 0.9, 0.3],
        [0.5, 0.5, 0.5, 0.5, 0.5],
    ]
)
TARGETS = np.array([2, 3, 0])


def scorer(rows):
    return SCORES[torch.as_tensor(rows)]


def test_ranks_are_pessimistic_on_ties():
    assert target_ranks(SCORES, torch.as_tensor(TARGETS)).tolist() == [2, 0, 4]


def test_hr_and_ndcg_by_hand():
    m = evaluate_ranking(scorer, TARGETS, n_items=5, ks=(1, 3, 5))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["hr@5"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(6)) / 3)
    assert m["users"] == 3


def test_history_masking_removes_items_but_never_the_target():
    exclude = [np.array([0, 1]), np.array([3, 4]), np.array([], dtype=np.int64)]
    m = evaluate_ranking(scorer, TARGETS, n_items=5, exclude=exclude, ks=(1,))
    # user 0: items 0 and 1 masked -> rank 0; user 1: its target 3 is in its history but stays.
    assert m["hr@1"] == pytest.approx(2 / 3)


def test_coverage_counts_distinct_recommended_items():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    m = evaluate_ranking(lambda r: scores[torch.as_tensor(r)], np.array([0, 0, 0]), n_items=4, ks=(1, 2))
    assert m["coverage@1"] == pytest.approx(2 / 4)  # items 0 and 3
    assert m["coverage@2"] == pytest.approx(4 / 4)  # {0,1} | {0,2} | {3,2}


def test_long_tail_metrics_use_tail_users_only():
    tail = long_tail_mask(np.array([10, 9, 1, 0, 2]), head_fraction=0.4)  # head: items 0 and 1
    assert tail.tolist() == [False, False, True, True, True]
    m = evaluate_ranking(scorer, TARGETS, n_items=5, tail_items=tail, ks=(1, 3))
    assert m["tail_users"] == 2  # targets 2 and 3
    assert m["tail_hr@1"] == pytest.approx(0.5)
    assert m["tail_ndcg@3"] == pytest.approx((0.5 + 1.0) / 2)


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    scores = torch.as_tensor(rng.normal(size=(257, 300)), dtype=torch.float32)
    targets = rng.integers(0, 300, size=257)
    exclude = [rng.integers(0, 300, size=rng.integers(0, 9)) for _ in range(257)]
    one = evaluate_ranking(lambda r: scores[torch.as_tensor(r)], targets, 300, exclude=exclude, chunk_size=1)
    big = evaluate_ranking(lambda r: scores[torch.as_tensor(r)], targets, 300, exclude=exclude, chunk_size=1000)
    assert one == big


def test_sums_over_shards_of_the_users_give_the_metrics_of_all():
    rng = np.random.default_rng(0)
    scores, targets = torch.from_numpy(rng.normal(size=(200, 3000))), rng.integers(0, 3000, 200)
    scores[np.arange(200), targets] += 3  # some hits
    tail = long_tail_mask(rng.integers(0, 50, 3000))
    ranking = rank_users(lambda r: scores[torch.as_tensor(r)], targets, 3000)
    whole = ranking_metrics(ranking, targets, 3000, tail)
    parts = [np.arange(0, 130), np.arange(130, 131), np.arange(131, 200)]
    sums = [MetricSums.of(Ranking(ranking.ranks[p], ranking.top[p]), targets[p], 3000, tail) for p in parts]
    merged = (sums[0] + sums[1] + sums[2]).metrics()
    assert merged.keys() == whole.keys() and all(merged[k] == pytest.approx(whole[k], abs=1e-12) for k in whole)
    assert (
        0 < merged["coverage@10"] < 1 and 0 < merged["hr@10"] < 1 and merged["tail_users"] == int(tail[targets].sum())
    )
    with pytest.raises(ValueError, match="add up"):
        sums[0] + MetricSums.of(ranking, targets, 3000)  # no tail rule


def test_table_lists_both_splits():
    m = {"hr@10": 0.1, "ndcg@10": 0.05}
    table = format_table({"sasrec": {"valid": m, "test": m}}, ks=(10,))
    assert "| sasrec | valid | 0.1000 | 0.0500 |" in table and "| sasrec | test |" in table
