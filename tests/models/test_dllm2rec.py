"""DLLM2Rec on real Beauty sequences: the teacher's rankings, the importance weights, and a student that
learns what the teacher ranks and reads item features (saved and loaded with them)."""

import functools

import numpy as np
import pyarrow as pa
import pytest
import torch

from r2end_core import models
from r2end_core.config import Dllm2recConfig, HistoryRule, SasrecArgs, SasrecConfig
from r2end_core.data.items import Catalogue
from r2end_core.data.splits import Split, index_sequences, training_part
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models import dllm2rec, instances, sasrec

SMALL = SasrecArgs(hidden_size=32, num_heads=2, inner_size=32, max_len=20, dropout=0.2)


def untrained_teacher(items) -> sasrec.SasrecRecommender:
    torch.manual_seed(5)
    manifest = sasrec.manifest("teacher", SMALL, items.num_rows, HistoryRule(), {})
    return sasrec.SasrecRecommender(sasrec.SASRec(items.num_rows, SMALL).eval(), items["item_id"].to_pylist(), manifest)


def test_the_teachers_rankings_are_its_best_unseen_items(prepared_tables):
    users, items = prepared_tables
    teacher = untrained_teacher(items)
    ranked = instances.training_instances(users, "all", SMALL.max_len)
    chunked = functools.partial(metrics.top_items, chunk_size=97)  # chunks that do not divide the instances
    table = dllm2rec.teacher_rankings(teacher, users, Catalogue(items), ranked, 5, HistoryRule(), chunked)
    assert table.schema == dllm2rec.schemas.TEACHER_RANKINGS and table.num_rows == len(ranked[0])
    sequences = index_sequences(users, items)
    item_vectors = teacher.item_vectors()
    for n in [0, 1, 500, table.num_rows - 1]:  # against scoring the one instance alone
        row, position = int(ranked[0][n]), int(ranked[1][n])
        history = sequences[row][:position]
        histories = instances.instance_histories(users, Catalogue(items), np.array([row]), np.array([position]), None)
        user = teacher.user_vectors(histories)[0]
        scores = item_vectors @ user
        scores[history] = -np.inf
        assert table["items"][n].as_py() == np.argsort(-scores, kind="stable")[:5].tolist()
        target = item_vectors[sequences[row][position]]
        assert np.isclose(table["target_distance"][n].as_py(), ((user - target) ** 2).sum(), rtol=1e-4)
    # made a block of users at a time (as train_dllm2rec makes them): the same rows, in the same order (the
    # floats up to the order of a batched sum)
    blocks = [users.slice(0, 7), users.slice(7, 50), users.slice(57)]
    by_block = [
        dllm2rec.teacher_rankings(
            teacher, b, Catalogue(items), instances.training_instances(b, "all", SMALL.max_len), 5, HistoryRule()
        )
        for b in blocks
    ]
    joined = pa.concat_tables(by_block)
    for exact in ("user_id", "position", "items"):
        assert joined[exact].equals(table[exact])
    assert np.allclose(joined["target_distance"].to_numpy(), table["target_distance"].to_numpy(), rtol=1e-5)


def test_importance_weights_follow_rank_confidence_and_agreement(prepared_tables):
    users, _ = prepared_tables
    rankings = pa.table(
        {
            "user_id": users["user_id"][:2].to_pylist(),
            "position": [1, 1],
            "items": [[4, 5, 6], [4, 5, 6]],
            "scores": [[0.9, 0.8, 0.7]] * 2,
            "target_distance": [0.2, 2.0],  # the teacher was closer to the first user's true item
        },
        schema=dllm2rec.schemas.TEACHER_RANKINGS,
    )
    loss = dllm2rec.RankingDistillation(rankings, users, Dllm2recConfig())
    student_top = torch.tensor([[9, 4, 10], [9, 10, 11]])  # the student's top 3 holds item 4 for the first only
    weights = loss.importance(torch.tensor([0, 1]), student_top)
    assert weights[0, 0] > weights[0, 1] > weights[0, 2]  # rank, and item 4 agrees with the student
    assert torch.all(weights[0] > weights[1])  # more confident instance
    assert torch.isclose(weights[0, 1] - weights[0, 2], weights[1, 1] - weights[1, 2])  # rank alone


@pytest.mark.parametrize("positions", ["last", "all"])
def test_the_ranking_term_is_the_weighted_soft_label_cross_entropy(prepared_tables, positions):
    """The term, computed from the log-probabilities the cross-entropy already made, against the formula
    written out position by position: every predicted position with a ranking (``all``: each one) adds
    ``-sum_k w_k log p(item_k)``, and the sum is divided by the batch's predicted positions."""
    users, items = prepared_tables
    rows, at = instances.training_instances(users, positions, SMALL.max_len)
    teacher = untrained_teacher(items)
    rankings = dllm2rec.teacher_rankings(teacher, users, Catalogue(items), (rows, at), 5, HistoryRule())
    cfg = Dllm2recConfig(ranking_weight=0.7)
    loss = dllm2rec.RankingDistillation(rankings, users, cfg)
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    batch = next(sasrec.training_batches(tokens, 16, SMALL.max_len, np.random.default_rng(0)))
    model = sasrec.SASRec(items.num_rows, SMALL)
    hidden = model(batch.inputs)
    real = batch.targets > 0
    scores = sasrec.FullSoftmax(model, hidden[real], batch.targets[real] - 1)
    logits, log_probs = scores.logits, torch.log_softmax(scores.logits, 1)
    outputs = sasrec.StepOutputs(hidden, None, real, scores, torch.tensor(0.0))
    term, value = loss(batch, outputs, epoch=1)

    instance_of = {
        (u, p): n for n, (u, p) in enumerate(zip(rankings["user_id"].to_pylist(), rankings["position"].to_pylist()))
    }
    user_ids = users["user_id"].to_pylist()
    expected, ranked = 0.0, 0
    for n, (b, t) in enumerate(real.nonzero().tolist()):
        instance = instance_of.get((user_ids[batch.rows[b]], int(batch.positions[b, t])))
        if instance is None:
            continue
        ranked += 1
        weights = loss.importance(torch.tensor([instance]), logits[n : n + 1].detach().topk(5).indices)[0]
        expected -= float((weights * log_probs[n, loss.items[instance]]).sum().detach())
    assert ranked == (int(real.sum()) if positions == "all" else len(batch.rows))
    assert value == pytest.approx(expected / int(real.sum()), rel=1e-5)
    assert term.item() == pytest.approx(0.7 * value, rel=1e-6)
    # with the sampled softmax (a catalogue too large for the full one), drawing every item often: the same term
    counts = torch.as_tensor(items["train_popularity"].to_numpy(), dtype=torch.float32)
    many = sasrec.SampledSoftmax(model, hidden[real], batch.targets[real] - 1, 200 * items.num_rows, counts)
    _, sampled = loss(batch, sasrec.StepOutputs(hidden, None, real, many, torch.tensor(0.0)), epoch=1)
    assert sampled == pytest.approx(value, rel=0.02)


def test_a_student_learns_what_the_teacher_ranks(prepared_tables):
    """The ranking term pulls the teacher's top items up the student's ranking, against the same student
    trained on cross-entropy alone."""
    users, items = prepared_tables
    teacher = untrained_teacher(items)  # ranks by chance: nothing the data alone would teach
    rows, positions = instances.training_instances(users, "last", SMALL.max_len)
    rankings = dllm2rec.teacher_rankings(teacher, users, Catalogue(items), (rows, positions), 10, HistoryRule())
    cfg = SasrecConfig(model=SMALL, batch_size=64, learning_rate=5e-3, max_epochs=8, eval_every=8, seed=3)
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    teacher_items = torch.tensor(rankings["items"].to_pylist())

    def teacher_items_log_prob(extras: sasrec.Extras | None) -> float:
        *_, (state, _) = sasrec.train(users, items, cfg, HistoryRule(), torch.device("cpu"), extras=extras)
        module = sasrec.SASRec(items.num_rows, SMALL)
        module.load_state_dict(state["current"]["model"])
        with torch.no_grad():
            hidden = sasrec.user_vectors(module.eval(), [t[:p] for t, p in zip(tokens, positions)], torch.device("cpu"))
            return float(torch.log_softmax(module.catalogue_logits(hidden), 1).gather(1, teacher_items).mean())

    # An untrained teacher's user vectors are far from every item: its confidence weights are near 0, so the
    # term is weighted up for a clear effect in 8 short epochs.
    loss = dllm2rec.RankingDistillation(rankings, users, Dllm2recConfig(ranking_weight=10.0, embedding_weight=0.0))
    distilled, alone = teacher_items_log_prob(sasrec.Extras(auxiliary=loss)), teacher_items_log_prob(None)
    assert distilled > alone + 1.0


def test_a_student_with_item_features_saves_and_loads_them(tmp_path, prepared_tables):
    users, items = prepared_tables
    features = np.random.default_rng(0).normal(size=(items.num_rows, 12)).astype(np.float32)
    cfg = SasrecConfig(model=SMALL, batch_size=64, max_epochs=1, seed=3)
    extras = sasrec.Extras(item_features=features, feature_weight=0.3)
    *_, (state, _) = sasrec.train(users, items, cfg, HistoryRule(), torch.device("cpu"), extras=extras)
    module = extras.module(items.num_rows, SMALL)
    module.load_state_dict(state["best"]["weights"]["model"])
    assert torch.equal(module.item_features[1:], torch.from_numpy(features))
    manifest = sasrec.manifest("dllm2rec-test", SMALL, items.num_rows, HistoryRule(), {})
    model = sasrec.SasrecRecommender(module.eval(), items["item_id"].to_pylist(), manifest)
    layout = Layout(str(tmp_path))
    model.manifest = models.save(layout, model.manifest, model.write_files)
    loaded = models.load(layout, "dllm2rec-test")
    valid = EvalSet.build(users, items, Split.VALID)
    assert evaluate(loaded, valid).metrics == evaluate(model, valid).metrics
    without = sasrec.SASRec(items.num_rows, SMALL)
    id_only = {k: v for k, v in module.state_dict().items() if k not in ("item_features", "feature_map.weight")}
    without.load_state_dict(id_only)
    assert not torch.allclose(without.eval()(torch.tensor([[3, 4]])), module(torch.tensor([[3, 4]])))  # features count
