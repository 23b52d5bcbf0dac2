"""Profile distillation on real Beauty sequences: profiles matched to users, the term while it lasts, and
users without a profile adding nothing."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from r2end_core.config import HistoryRule, ProfileConfig, SasrecArgs, SasrecConfig
from r2end_core.data.splits import index_sequences, training_part
from r2end_core.models import profile, sasrec

SMALL = SasrecArgs(hidden_size=32, num_heads=2, inner_size=32, max_len=20, dropout=0.2)
CFG = SasrecConfig(model=SMALL, batch_size=64, max_epochs=4, eval_every=4, seed=3)


def train(users, items, loss):
    extras = sasrec.Extras(auxiliary=loss) if loss is not None else None
    return list(sasrec.train(users, items, CFG, HistoryRule(), torch.device("cpu"), extras=extras))


def test_profiles_must_name_known_users_once(prepared_tables):
    users, _ = prepared_tables
    first = users["user_id"][0].as_py()
    with pytest.raises(ValueError, match="not in the users table"):
        profile.profile_matrix(users, pa.table({"user_id": ["nobody"], "embedding": [[1.0]]}))
    with pytest.raises(ValueError, match="more than one profile"):
        profile.profile_matrix(users, pa.table({"user_id": [first, first], "embedding": [[1.0], [2.0]]}))


def test_the_term_trains_in_its_phase_and_then_stops(prepared_tables):
    users, items = prepared_tables
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(users.num_rows, 24)).astype(np.float32)
    has = rng.random(users.num_rows) < 0.5
    loss = profile.ProfileDistillation(profiles * has[:, None], has, SMALL.hidden_size, ProfileConfig(distill_epochs=3))
    records = [record for _, record in train(users, items, loss)]
    terms = [r["profile_distill"] for r in records]
    assert terms[2] < terms[0] and terms[3] == 0.0  # learnt during the phase; cross-entropy alone after it


def test_early_stopping_waits_for_the_phase_to_end(prepared_tables):
    """Checks that find no gain while the term trains do not count towards patience."""
    users, items = prepared_tables
    everyone = np.ones(users.num_rows, dtype=bool)
    loss = profile.ProfileDistillation(
        np.ones((users.num_rows, 8), np.float32), everyone, SMALL.hidden_size, ProfileConfig(distill_epochs=3)
    )
    # steps too small to move a float32 weight: every check ties the first, so none is a gain
    stalled = CFG.model_copy(update={"learning_rate": 1e-12, "eval_every": 1, "patience": 1, "max_epochs": 6})
    run = sasrec.train(users, items, stalled, HistoryRule(), torch.device("cpu"), extras=sasrec.Extras(auxiliary=loss))
    assert [record["epoch"] for _, record in run] == [1, 2, 3, 4]  # the first check after the phase stops it


def test_users_without_a_profile_train_as_plain_sasrec(prepared_tables):
    users, items = prepared_tables
    nobody = np.zeros(users.num_rows, dtype=bool)
    loss = profile.ProfileDistillation(
        np.zeros((users.num_rows, 8), np.float32), nobody, SMALL.hidden_size, ProfileConfig()
    )
    with_term, plain = train(users, items, loss)[-1][0], train(users, items, None)[-1][0]
    for name, weights in plain["current"]["model"].items():
        assert torch.equal(weights, with_term["current"]["model"][name]), name


def test_each_user_with_a_profile_weighs_the_same_whatever_the_share(prepared_tables):
    """The term is alpha / (1 - alpha) x the cross-entropy x the batch's share of users with a profile."""
    users, items = prepared_tables
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    batch = next(sasrec.training_batches(tokens, 8, SMALL.max_len, np.random.default_rng(0)))
    has = np.zeros(users.num_rows, dtype=bool)
    has[batch.rows[:2]] = True  # 2 of the batch's 8 users
    profiles = np.random.default_rng(1).normal(size=(users.num_rows, 8)).astype(np.float32)
    cfg = ProfileConfig(alpha=0.4)
    loss = profile.ProfileDistillation(profiles, has, SMALL.hidden_size, cfg)
    model = sasrec.SASRec(items.num_rows, SMALL)
    hidden, layers = model(batch.inputs, return_layers=True)
    cross_entropy = torch.tensor(7.0)
    real = batch.targets > 0
    scores = sasrec.FullSoftmax(model, hidden[real], batch.targets[real] - 1)
    outputs = sasrec.StepOutputs(hidden, layers, real, scores, cross_entropy)
    term, mse = loss(batch, outputs, epoch=1)
    assert mse > 0 and term.item() == pytest.approx(0.4 / 0.6 * 7.0 * 2 / 8, rel=1e-5)
