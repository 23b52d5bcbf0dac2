"""Our fused student on real Beauty sequences: the weight search scores every combination as the fused
model ranks, and the fused model is one inner product, saved and loaded with its parts."""

import numpy as np
import pytest
import torch

from r2end_core import models
from r2end_core.config import FusionConfig, HistoryRule, SasrecArgs
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models import fusion, sasrec

SMALL = SasrecArgs(hidden_size=32, num_heads=2, inner_size=32, max_len=20, dropout=0.2)


def sasrec_model(items, name: str, seed: int) -> sasrec.SasrecRecommender:
    """An untrained SASRec: the fusion only reads the recommender interface."""
    torch.manual_seed(seed)
    manifest = sasrec.manifest(name, SMALL, items.num_rows, HistoryRule(), {})
    return sasrec.SasrecRecommender(sasrec.SASRec(items.num_rows, SMALL).eval(), items["item_id"].to_pylist(), manifest)


def search(parts, scored: EvalSet, candidates, chunk_size: int = 1024) -> np.ndarray:
    vectors = [p.user_vectors(scored.histories) for p in parts], [p.item_vectors() for p in parts]
    return fusion.weight_search(*vectors, scored, candidates, chunk_size)


def test_the_weight_search_scores_each_combination_as_the_fused_model_ranks(prepared_tables):
    users, items = prepared_tables
    parts = [sasrec_model(items, "a", seed=1), sasrec_model(items, "b", seed=2)]
    valid = EvalSet.build(users, items, Split.VALID)
    candidates = fusion.weight_grid(2, [0, 0.5, 3])
    searched = fusion.searched(candidates, search(parts, valid, candidates, chunk_size=7))
    assert [s["weights"] for s in searched] == [[1.0, 0.0], [1.0, 0.5], [1.0, 3.0]]
    for found in searched:
        fused = fusion.FusionRecommender(parts, found["weights"], fusion.manifest("f", parts, found["weights"]))
        scored = evaluate(fused, valid).metrics
        assert (found["hr@10"], found["ndcg@10"]) == pytest.approx((scored["hr@10"], scored["ndcg@10"]), abs=1e-9)
        assert found["tail_hr@10"] == pytest.approx(scored["tail_hr@10"], abs=1e-9)
    alone = evaluate(parts[0], valid).metrics  # weight 0 leaves the second part out
    assert searched[0]["ndcg@10"] == pytest.approx(alone["ndcg@10"], abs=1e-9)
    assert len({s["ndcg@10"] for s in searched}) > 1  # the weights change the ranking


def test_the_weight_search_adds_up_over_blocks_of_users(prepared_tables):
    """The validation users searched a block at a time (as train_fusion reads them) sum to all at once."""
    users, items = prepared_tables
    parts = [sasrec_model(items, "a", seed=1), sasrec_model(items, "b", seed=2)]
    candidates = fusion.weight_grid(2, [0, 0.5, 3])
    whole = search(parts, EvalSet.build(users, items, Split.VALID), candidates)
    cut = users.num_rows // 3
    blocks = [EvalSet.build(users.slice(s, n), items, Split.VALID) for s, n in ((0, cut), (cut, users.num_rows))]
    summed = sum(search(parts, block, candidates) for block in blocks)
    assert summed[:, 0].tolist() == [users.num_rows] * len(candidates)
    assert np.allclose(summed, whole, rtol=1e-12, atol=1e-9)


def test_a_long_tail_floor_picks_the_best_ndcg_among_the_weights_above_it(prepared_tables):
    users, items = prepared_tables
    parts = [sasrec_model(items, "a", seed=1), sasrec_model(items, "b", seed=2)]
    valid = EvalSet.build(users, items, Split.VALID)
    candidates = fusion.weight_grid(2, [0, 0.5, 1, 3, 10])
    searched = fusion.searched(candidates, search(parts, valid, candidates))
    first_alone = searched[0]["tail_hr@10"]
    assert first_alone > 0 and len({s["tail_hr@10"] for s in searched}) > 1
    # a floor between the first part's and the most any combination reaches
    ratio = (first_alone + max(s["tail_hr@10"] for s in searched)) / 2 / first_alone
    chosen = fusion.best_weights(searched, min_long_tail_ratio=ratio)
    above = [s for s in searched if s["tail_hr@10"] >= ratio * first_alone]
    assert chosen == max(above, key=lambda s: s["ndcg@10"])["weights"]
    assert fusion.best_weights(searched, 0.0) == max(searched, key=lambda s: s["ndcg@10"])["weights"]
    assert fusion.floor_missed(searched, chosen, ratio) is None
    # a floor none reaches: the most long-tail HR@10 there is, reported
    unreachable = max(s["tail_hr@10"] for s in searched) / first_alone + 0.1
    most = fusion.best_weights(searched, unreachable)
    assert next(s for s in searched if s["weights"] == most)["tail_hr@10"] == max(s["tail_hr@10"] for s in searched)
    assert "no weight combination reaches" in fusion.floor_missed(searched, most, unreachable)
    with pytest.raises(ValueError, match="needs the first part alone"):
        fusion.best_weights(searched[1:], ratio)


def test_a_fused_model_is_one_inner_product_saved_with_its_parts(tmp_path, prepared_tables):
    users, items = prepared_tables
    layout = Layout(str(tmp_path))
    parts = [sasrec_model(items, "a", seed=1), sasrec_model(items, "b", seed=2)]
    for part in parts:
        part.manifest = models.save(layout, part.manifest, part.write_files)
    fused = fusion.FusionRecommender(parts, [1.0, 2.5], fusion.manifest("fused", parts, [1.0, 2.5]))
    assert fused.manifest.kind == "fusion" and fused.manifest.reads == "item_ids"
    assert fused.manifest.inputs == {"a": parts[0].manifest.version, "b": parts[1].manifest.version}
    first = Histories(EvalSet.build(users, items, Split.VALID).histories.item_ids[:5])
    scores = [p.user_vectors(first) @ p.item_vectors().T for p in parts]
    assert np.allclose(fused.user_vectors(first) @ fused.item_vectors().T, scores[0] + 2.5 * scores[1], atol=1e-4)

    fused.manifest = models.save(layout, fused.manifest, fused.write_files)
    loaded = models.load(layout, "fused")
    assert loaded.weights == [1.0, 2.5]
    assert [p.manifest.version for p in loaded.parts] == list(fused.manifest.inputs.values())
    assert np.array_equal(loaded.user_vectors(first), fused.user_vectors(first))
    with pytest.raises(ValueError, match="new items need a model trained with them"):
        loaded.new_item_vectors(["Rose lip balm"])


def test_parts_must_share_a_catalogue_and_weights_must_be_non_negative(prepared_tables):
    _, items = prepared_tables
    smaller = sasrec_model(items.slice(0, items.num_rows - 1), "b", seed=2)
    with pytest.raises(ValueError, match="hold different catalogues"):
        fusion.FusionRecommender([sasrec_model(items, "a", seed=1), smaller], [1.0, 1.0], None)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        FusionConfig(weight_grid=[0, -1])
    with pytest.raises(ValueError, match="at least 2"):
        FusionConfig(parts=["sasrec"])
