"""Distillation pieces, and one real training step of MiniLM toward real targets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from r2end_core import schemas
from r2end_core.config import DistillConfig, EmbedConfig
from r2end_core.layout import Layout
from r2end_core.models.r2end import distill
from r2end_core.summaries import DistillSummary
from r2end_core.text import encoders


def targets_table() -> pa.Table:
    rows = [
        ("a", "oracle", None),
        ("b", "oracle", None),
        ("a", "unguided", True),
        ("b", "unguided", False),
        ("a", "metadata", None),
        ("b", "metadata", None),
        ("c", "metadata", None),
    ]
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "target": [r[1] for r in rows],
            "accepted": [r[2] for r in rows],
            "embedding": schemas.vector_column(np.eye(7, dtype=np.float32)),
        },
        schema=schemas.TARGET_EMBEDDINGS,
    )


def oracle_targets(user_ids: list[str], shift: int = 0) -> pa.Table:
    """An oracle target per user (schemas.TARGET_EMBEDDINGS): 4-d one-hot rows, ``shift`` places along."""
    n = len(user_ids)
    return pa.table(
        {
            "user_id": user_ids,
            "target": ["oracle"] * n,
            "accepted": [None] * n,
            "embedding": schemas.vector_column(np.eye(n, 4, k=shift, dtype=np.float32)),
        },
        schema=schemas.TARGET_EMBEDDINGS,
    )


def test_select_targets_per_setting():
    table = targets_table()
    assert distill.select_targets(table, "oracle")[0] == ["a", "b"]
    assert distill.select_targets(table, "unguided_all")[0] == ["a", "b"]
    ids, vectors, with_text = distill.select_targets(table, "unguided_grounded")
    assert ids == ["a"] and vectors.argmax(1).tolist() == [2] and with_text.tolist() == [True]
    # ablation 3: the oracle users' metadata targets; the no-LLM twin: every user's
    assert distill.select_targets(table, "metadata")[0] == ["a", "b"]
    ids, _, with_text = distill.select_targets(table, "metadata", "all")
    assert ids == ["a", "b", "c"] and not with_text.any()
    # every user: the teacher's target where it wrote one, the metadata target elsewhere
    ids, vectors, with_text = distill.select_targets(table, "oracle", "all")
    assert ids == ["a", "b", "c"] and vectors.argmax(1).tolist() == [0, 1, 6] and with_text.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="no 'unguided' rows accepted by rejection sampling"):
        distill.select_targets(table.filter(pa.compute.equal(table["accepted"], False)), "unguided_grounded")


def test_resumed_batches_are_the_same_batches():
    first = distill.batch_rows(10, 3, epoch=1, seed=22)
    assert [b.tolist() for b in first] == [b.tolist() for b in distill.batch_rows(10, 3, epoch=1, seed=22)]
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    assert [b.tolist() for b in first] != [b.tolist() for b in distill.batch_rows(10, 3, epoch=2, seed=22)]


def test_deepspeed_config_splits_the_batch():
    cfg = DistillConfig(batch_size=16, zero_stage=3, dtype="bfloat16")
    ds = distill.deepspeed_config(cfg, 2)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        distill.deepspeed_config(cfg, 3)


def test_a_training_step_moves_the_student_toward_its_targets(prepared_tables):
    users, items = prepared_tables
    torch.manual_seed(0)
    model = distill.load_student("bundled:all-minilm-l6-v2", "cpu", max_seq_length=128)
    histories = users.column("train_history_text").to_pylist()[:8]
    targets = torch.from_numpy(encoders.encode(model, items.column("metadata_text").to_pylist()[:8]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        loss = distill.distillation_loss(model(model.preprocess(histories))["sentence_embedding"], targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_the_student_trains_with_dropout_on():
    """transformers loads MiniLM in eval mode; the student the distill loop trains is in train mode."""
    dropouts = lambda model: [m.training for m in model.modules() if isinstance(m, torch.nn.Dropout)]  # noqa: E731
    assert not any(dropouts(encoders.load_encoder("bundled:all-minilm-l6-v2")))
    student = distill.load_student("bundled:all-minilm-l6-v2", "cpu", 128)
    assert dropouts(student) and all(dropouts(student))
    features = student.preprocess(["1. 2014-01-01: Rose lip balm"])
    assert not torch.equal(student(dict(features))["sentence_embedding"], student(dict(features))["sentence_embedding"])


def test_examples_hold_out_users_by_id(prepared_tables):
    users, _ = prepared_tables
    targets = oracle_targets(users.column("user_id").to_pylist()[:20])
    train, held, with_text = distill.examples(users, targets, DistillConfig(holdout_fraction=0.25))
    assert (
        train.num_rows == with_text == 15
        and held.num_rows == 5
        and not set(train["user_id"].to_pylist()) & set(held["user_id"].to_pylist())
    )
    history = dict(zip(users.column("user_id").to_pylist(), users.column("train_history_text").to_pylist()))
    assert train.schema.equals(schemas.DISTILL_EXAMPLES) and all(
        history[u] == t for u, t in zip(train["user_id"].to_pylist(), train["history_text"].to_pylist())
    )


def test_length_buckets_batch_similar_histories_and_see_every_user(prepared_tables):
    users, _ = prepared_tables
    texts = users.column("train_history_text").to_pylist()[:200]
    student = distill.load_student("bundled:all-minilm-l6-v2", "cpu", max_seq_length=128)
    lengths = distill.token_lengths(student, texts)
    assert lengths.max() == 128 and lengths.min() < 64  # cut at the student's max length, as it reads them
    random, bucketed = (distill.batch_rows(200, 8, 1, 22, lengths=given) for given in (None, lengths))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(200)) and len(bucketed) == len(random)
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)  # noqa: E731
    assert padded(bucketed) < 0.8 * padded(random)


def test_a_student_that_learnt_the_same_examples_is_found(prepared_tables, tmp_path):
    """``distilled_before`` names a finished student of the same settings and examples (not the run itself),
    and none where a setting or the examples differ, or where that student's folder was started again (its
    model may be changing)."""
    users, _ = prepared_tables
    targets = oracle_targets(users.column("user_id").to_pylist()[:12])
    layout, ec = Layout(str(tmp_path)), EmbedConfig()

    def started(run: str, learnt: pa.Table = targets, **settings) -> DistillConfig:
        """A run's examples written, as the stage writes them before it trains."""
        cfg = DistillConfig(run_name=run, holdout_fraction=0.25, **settings)
        distill.start_run(layout, cfg, *distill.examples(users, learnt, cfg)[:2])
        return cfg

    def finished(cfg: DistillConfig) -> None:
        summary = {"target": cfg.target, "users_distilled": 9, "users_held_out": 3, "steps": 1}
        summary |= {"resumed_from_step": 0, "loss_first": 1.0, "loss_last": 0.9, "losses": [0.9]}
        summary |= {"train_seconds": 1.0, "ray_train_run": f"distill-{cfg.run_name}-0", "config": cfg.model_dump()}
        summary |= {"encoder": ec.encoder, "max_seq_length": ec.max_seq_length, "distances_held_out": None}
        DistillSummary(**summary, wall_time_s=1.0).write(layout.student(cfg.run_name, "metrics.json"))

    first = started("first")
    assert distill.distilled_before(layout, started("second"), ec) is None  # the first has not finished
    finished(first)
    assert distill.distilled_before(layout, first, ec) is None  # not itself
    found = distill.distilled_before(layout, started("second", checkpoint_every=7), ec)
    assert found and found[0] == "first" and found[1].ray_train_run == "distill-first-0"
    assert distill.distilled_before(layout, started("third", learning_rate=2e-5), ec) is None
    other_targets = oracle_targets(targets.column("user_id").to_pylist(), shift=1)
    assert distill.distilled_before(layout, started("fourth", other_targets), ec) is None
    assert distill.distilled_before(layout, started("second"), ec.model_copy(update={"max_seq_length": 64})) is None
    started("first")  # a later run of the first student, not finished: its folder holds no finished run
    assert distill.distilled_before(layout, started("second"), ec) is None
