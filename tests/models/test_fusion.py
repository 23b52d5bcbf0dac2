"""Our fused student on real Beauty sequences: the text prior looked up per predicted position, training on
the sum with the weight learnt, and the fused model as one inner product, saved and loaded."""

import numpy as np
import torch

from r2end_core import models
from r2end_core.config import HistoryRule, SasrecArgs, SasrecConfig
from r2end_core.data.histories import Histories
from r2end_core.data.items import Catalogue
from r2end_core.data.splits import Split, index_sequences, training_part
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models import fusion, instances, sasrec

SMALL = SasrecArgs(hidden_size=32, num_heads=2, inner_size=32, max_len=20, dropout=0.2)


def sasrec_model(items, name: str, seed: int) -> sasrec.SasrecRecommender:
    torch.manual_seed(seed)
    manifest = sasrec.manifest(name, SMALL, items.num_rows, HistoryRule(), {})
    return sasrec.SasrecRecommender(sasrec.SASRec(items.num_rows, SMALL).eval(), items["item_id"].to_pylist(), manifest)


def prior_of(users, items, text: sasrec.SasrecRecommender) -> fusion.TextPrior:
    """The text model's user vector for every trained position (a SASRec stands in: only the interface counts)."""
    rows, positions = instances.training_instances(users, "all", SMALL.max_len)
    histories = instances.instance_histories(users, Catalogue(items), rows, positions, None)
    user_ids = users["user_id"].to_pylist()
    index = instances.InstanceIndex(users, [user_ids[r] for r in rows.tolist()], positions)
    return fusion.TextPrior(index, text.user_vectors(histories), text.item_vectors(), weight=3.0)


def test_the_prior_scores_each_predicted_position_by_its_own_history(prepared_tables):
    users, items = prepared_tables
    text = sasrec_model(items, "text", seed=1)
    prior = prior_of(users, items, text)
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    batch = next(sasrec.training_batches(tokens, 16, SMALL.max_len, np.random.default_rng(0)))
    real = batch.targets > 0
    scores = prior(batch, real)
    rows = torch.as_tensor(batch.rows)[:, None].expand_as(batch.positions)[real]
    for n in [0, 7, int(real.sum()) - 1]:  # against the text model on that one history
        row, position = int(rows[n]), int(batch.positions[real][n])
        history = instances.instance_histories(users, Catalogue(items), np.array([row]), np.array([position]), None)
        expected = 3.0 * text.user_vectors(history)[0] @ text.item_vectors().T
        assert np.allclose(scores[n].detach().numpy(), expected, atol=1e-4)


def test_a_fused_student_learns_its_weight_and_saves_as_one_inner_product(tmp_path, prepared_tables):
    users, items = prepared_tables
    text = sasrec_model(items, "text", seed=1)
    layout = Layout(str(tmp_path))
    text.manifest = models.save(layout, text.manifest, text.write_files)
    extras = fusion.FusionExtras(prior=prior_of(users, items, text), text_model=text)
    cfg = SasrecConfig(model=SMALL, batch_size=64, max_epochs=2, seed=3)
    *_, (state, _) = sasrec.train(users, items, cfg, HistoryRule(), torch.device("cpu"), extras=extras)
    assert state["best"]["weights"]["prior"]["weight"].item() != 3.0  # learnt

    module = sasrec.SASRec(items.num_rows, SMALL)
    module.load_state_dict(state["best"]["weights"]["model"])
    extras.prior.load_state_dict(state["best"]["weights"]["prior"])
    base = sasrec.manifest("fused", SMALL, items.num_rows, HistoryRule(), {})
    fused = extras.recommender(sasrec.SasrecRecommender(module.eval(), items["item_id"].to_pylist(), base))
    assert fused.manifest.kind == "fusion" and fused.manifest.reads == "item_ids+text"
    valid = EvalSet.build(users, items, Split.VALID)
    # one inner product: SASRec's score plus the weight times the text model's
    first = Histories(valid.histories.item_ids[:5])
    both = fused.user_vectors(first) @ fused.item_vectors().T
    alone = fused.sasrec.user_vectors(first) @ fused.sasrec.item_vectors().T
    text_scores = text.user_vectors(first) @ text.item_vectors().T
    assert np.allclose(both, alone + fused.weight * text_scores, atol=1e-3)
    # the best validation score during training is the fused model's
    assert evaluate(fused, valid).metrics["ndcg@10"] == state["best"]["valid"]["ndcg@10"]

    fused.manifest = models.save(layout, fused.manifest, fused.write_files)
    loaded = models.load(layout, "fused")
    assert loaded.weight == fused.weight and loaded.text.manifest.version == text.manifest.version
    assert evaluate(loaded, valid).metrics == evaluate(fused, valid).metrics
