"""SASRec on real Beauty sequences: batches (one rank and several), causality, training, its recommender."""

import copy
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from r2end_core import models, storage
from r2end_core.config import HistoryRule, SasrecArgs, SasrecConfig, SoftmaxKind
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.data.splits import Split, index_sequences, training_part
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models import sasrec

SMALL = SasrecArgs(hidden_size=32, num_heads=2, inner_size=64, max_len=20, dropout=0.2)


def recommender(module: sasrec.SASRec, items) -> sasrec.SasrecRecommender:
    manifest = sasrec.manifest("sasrec-test", SMALL, items.num_rows, HistoryRule(), {})
    return sasrec.SasrecRecommender(module, items.column("item_id").to_pylist(), manifest)


@pytest.mark.parametrize("length_buckets", [True, False])
def test_batches_cover_every_training_position_once(prepared_tables, length_buckets):
    users, items = prepared_tables
    train = [training_part(s) + 1 for s in index_sequences(users, items)]
    seen, padded = [], 0
    rng = np.random.default_rng(0)
    for batch in sasrec.training_batches(train, 32, 20, rng, pool_batches=3, length_buckets=length_buckets):
        real = batch.targets > 0
        assert torch.equal(batch.inputs[:, 1:][real[:, 1:]], batch.targets[:, :-1][real[:, 1:]])  # shifted inputs
        assert batch.global_positions == int(real.sum())  # one rank: its batch is the global batch
        assert torch.equal(batch.positions >= 0, real)
        for row, positions, targets in zip(batch.rows, batch.positions, batch.targets):  # where each target sits
            assert [int(train[row][p]) for p in positions[positions >= 0]] == targets[targets > 0].tolist()
        seen.append(int(real.sum()))
        padded += int((~real).sum())
    assert sum(seen) == sum(min(len(s), 21) - 1 for s in train)
    # buckets of similar lengths pad far less than random batches do
    assert (padded < 0.5 * sum(seen)) if length_buckets else (padded > sum(seen))


def test_position_weighting_divides_every_batch_by_the_same_count(prepared_tables):
    users, items = prepared_tables
    train = [training_part(s) + 1 for s in index_sequences(users, items)]
    weighted = list(sasrec.training_batches(train, 32, 20, np.random.default_rng(0), position_weighted=True))
    per_batch = sum(b.global_positions for b in weighted) / len(weighted)
    assert all(b.loss_positions == pytest.approx(per_batch) for b in weighted)
    assert len({b.global_positions for b in weighted}) > 1  # the buckets' own counts differ
    for batch in sasrec.training_batches(train, 32, 20, np.random.default_rng(0)):
        assert batch.loss_positions == batch.global_positions  # each batch's mean


@pytest.mark.parametrize("users, world", [(257, 2), (130, 3)])
def test_every_rank_runs_the_same_steps_and_together_they_cover_each_batch(prepared_tables, users, world):
    """257 users in batches of 128 over 2 ranks: the last global batch has one user. Each rank takes its
    share of the same global batches, so they step together and none is ever empty."""
    seqs, items = prepared_tables[0], prepared_tables[1]
    train = [training_part(s) + 1 for s in index_sequences(seqs, items)][:users]
    per_rank = [
        list(sasrec.training_batches(train, 128, 20, np.random.default_rng(0), rank, world)) for rank in range(world)
    ]
    assert len({len(batches) for batches in per_rank}) == 1
    for step in zip(*per_rank):
        assert all(int((b.targets > 0).sum()) > 0 for b in step)
        assert sum(int((b.targets > 0).sum()) for b in step) == step[0].global_positions  # the shares make the batch


ORIGINAL_INPUTS = SMALL.model_copy(update={"positions_from_end": True, "scale_item_embeddings": True})


@pytest.mark.parametrize("args", [SMALL, ORIGINAL_INPUTS])
def test_attention_is_causal(args):
    torch.manual_seed(0)
    model = sasrec.SASRec(50, args).eval()
    a = torch.tensor([[3, 9, 4, 7]])
    b = torch.tensor([[3, 9, 4, 12]])
    assert torch.allclose(model(a)[0, :3], model(b)[0, :3])
    assert not torch.allclose(model(a)[0, 3], model(b)[0, 3])


@pytest.mark.parametrize("args", [SMALL, ORIGINAL_INPUTS])
def test_batched_user_vectors_match_one_at_a_time(prepared_tables, args):
    """Padding never changes a user's vector, also when positions count back from the latest item."""
    users, items = prepared_tables
    torch.manual_seed(0)
    model = sasrec.SASRec(items.num_rows, args).eval()
    tokens = [s[:-1] + 1 for s in index_sequences(users, items)[:40]]
    batched = sasrec.user_vectors(model, tokens, torch.device("cpu"), batch_size=16)
    with torch.no_grad():
        single = torch.stack([model(torch.as_tensor(t[-args.max_len :])[None])[0, -1] for t in tokens])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("softmax", [SoftmaxKind.FULL, SoftmaxKind.SAMPLED])
def test_training_lowers_loss_and_beats_untrained(prepared_tables, softmax):
    users, items = prepared_tables
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    module = sasrec.SASRec(items.num_rows, SMALL)
    valid = EvalSet.build(users, items, Split.VALID)
    before = evaluate(recommender(module, items), valid).metrics
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3)
    train = [training_part(s) + 1 for s in index_sequences(users, items)]
    chosen = sasrec.choose_softmax(SasrecConfig(softmax=softmax, sampled_negatives=64), popularity(items))
    batches = lambda: sasrec.training_batches(train, 64, 20, rng)  # noqa: E731
    losses = [
        sasrec.train_one_epoch(module, optimizer, batches(), torch.device("cpu"), softmax=chosen)["loss"]
        for _ in range(8)
    ]
    after = evaluate(recommender(module, items), valid).metrics
    assert losses[-1] < losses[0] - 0.5
    assert after["ndcg@20"] > before["ndcg@20"]
    assert {"hr@10", "ndcg@10", "coverage@10", "tail_hr@10"} <= set(after)


def popularity(items) -> np.ndarray:
    return items.column("train_popularity").to_numpy()


def test_the_sampled_normaliser_is_an_unbiased_estimate_of_the_full_one(prepared_tables):
    """Over repeated batches (targets drawn by popularity, as in-batch negatives are, plus a few uniform
    draws), exp of the sampled log-normaliser averages to the full softmax's sum; with many draws one
    batch's log-probabilities and cross-entropy come close to the exact ones."""
    _, items = prepared_tables
    torch.manual_seed(0)
    model = sasrec.SASRec(items.num_rows, SMALL)
    counts = torch.as_tensor(popularity(items), dtype=torch.float32).clamp(min=1)
    hidden = torch.randn(4, SMALL.hidden_size) * 3
    exact = torch.logsumexp(model.catalogue_logits(hidden), 1)
    with torch.no_grad():
        estimates = torch.stack(
            [
                sasrec.SampledSoftmax(model, hidden, torch.multinomial(counts, 4, True), 32, counts).log_normaliser
                for _ in range(4000)
            ]
        )
    assert torch.allclose(estimates.exp().mean(0).log(), exact, atol=0.05)
    assert (estimates - exact).abs().mean() > 0.05  # one small sample alone is far from exact
    targets = torch.tensor([3, 17, 17, 250])
    full = sasrec.FullSoftmax(model, hidden, targets)
    many = sasrec.SampledSoftmax(model, hidden, targets, 200 * items.num_rows, counts)
    rows, asked = torch.tensor([0, 2]), torch.tensor([[3, 5, 9], [1, 17, 400]])
    assert torch.allclose(many.log_probs_of(rows, asked), full.log_probs_of(rows, asked), atol=0.02)
    assert many.cross_entropy.item() == pytest.approx(full.cross_entropy.item(), abs=0.02)
    assert torch.equal(many.top(rows, 5), full.top(rows, 5))


def test_auto_samples_only_when_the_full_softmax_would_not_fit(prepared_tables):
    """Beauty-sized catalogues keep the exact full softmax; a catalogue of two million items trains with the
    sampled one, whose memory is set by the batch, not the catalogue (its full scores would take 300 GB)."""
    users, items = prepared_tables
    assert sasrec.choose_softmax(SasrecConfig(), popularity(items)) is sasrec.FullSoftmax
    huge = np.ones(2_000_000, dtype=np.int64)
    huge[: items.num_rows] += popularity(items)
    cfg = SasrecConfig(model=SasrecArgs(hidden_size=8, num_heads=1, inner_size=16, max_len=20), sampled_negatives=256)
    chosen = sasrec.choose_softmax(cfg, huge)
    assert chosen is not sasrec.FullSoftmax
    torch.manual_seed(0)
    module = sasrec.SASRec(len(huge), cfg.model)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    train = [training_part(s) + 1 for s in index_sequences(users, items)]
    batches = list(sasrec.training_batches(train, 256, 20, np.random.default_rng(0)))[:1] * 5
    losses = [
        sasrec.train_one_epoch(module, optimizer, iter([b]), torch.device("cpu"), softmax=chosen)["loss"]
        for b in batches
    ]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_the_saved_model_loads_and_scores_the_same(tmp_path, prepared_tables):
    users, items = prepared_tables
    torch.manual_seed(0)
    model = recommender(sasrec.SASRec(items.num_rows, SMALL), items)
    layout = Layout(str(tmp_path))
    model.manifest = models.save(layout, model.manifest, model.write_files)
    loaded = models.load(layout, "sasrec-test")
    assert (
        loaded.manifest == model.manifest and models.save(layout, model.manifest, model.write_files) == model.manifest
    )
    valid = EvalSet.build(users, items, Split.VALID)
    assert evaluate(loaded, valid).metrics == evaluate(model, valid).metrics
    with pytest.raises(UnknownItemsError):
        loaded.user_vectors(Histories([["NOT-AN-ITEM"]]))
    with pytest.raises(ValueError, match="new items need a model trained with them"):
        loaded.new_item_vectors(["Rose lip balm"])


def test_a_half_written_or_damaged_version_is_refused_and_saved_again(tmp_path, prepared_tables):
    _, items = prepared_tables
    torch.manual_seed(0)
    model = recommender(sasrec.SASRec(items.num_rows, SMALL), items)
    layout = Layout(str(tmp_path))
    saved = models.save(layout, model.manifest, model.write_files)
    folder = Path(layout.model_version(saved.name, saved.version))
    assert set(saved.files) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    # a writer killed mid-copy: weights written, no manifest; not a version, and the next save completes it
    (folder / "manifest.json").unlink()
    weights = next(folder / name for name in saved.files if name != "items.parquet")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FileNotFoundError):
        models.load(layout, saved.name, saved.version)
    assert models.save(layout, model.manifest, model.write_files) == saved
    models.load(layout, saved.name, saved.version)
    # a file changed under a saved version: loading it says so, and saving it again repairs it
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-1] + b"x")
    with pytest.raises(storage.DamagedVersionError, match=f"{weights.name} has sha256 .* the version is damaged"):
        models.load(layout, saved.name)
    assert models.save(layout, model.manifest, model.write_files) == saved
    assert weights.read_bytes() == whole
    models.load(layout, saved.name)
    # a manifest that records no files (written before versions recorded them) cannot be checked: refused
    storage.write_json(saved.model_copy(update={"files": {}}).model_dump(mode="json"), str(folder / "manifest.json"))
    with pytest.raises(storage.DamagedVersionError, match="records no files' sha256"):
        models.load(layout, saved.name)


def test_the_training_loop_selects_on_validation_and_resumes_where_it_stopped(prepared_tables):
    """The loop the Ray Train workers run, here in one process: each epoch yields a state to checkpoint; a
    run restarted from one goes on from the next epoch, exactly as the uninterrupted run did."""
    users, items = prepared_tables
    cfg = SasrecConfig(model=SMALL, batch_size=64, max_epochs=3, seed=3)

    def run(restored=None):
        return sasrec.train(users, items, cfg, HistoryRule(), torch.device("cpu"), restored=restored)

    states = [copy.deepcopy(state) for state, _ in run()]
    assert [s["epoch"] for s in states] == [1, 2, 3] and states[-1]["resumed_from_epoch"] == 0
    best = max(states[-1]["history"], key=lambda record: record["valid"]["ndcg@10"])
    assert states[-1]["best"]["epoch"] == best["epoch"]
    # Resumed after epoch 1 (its checkpoint through torch.save and a weights-only load), the loop trains
    # epochs 2 and 3 exactly as the run that was never stopped.
    buffer = io.BytesIO()
    torch.save(states[0], buffer)
    resumed = [copy.deepcopy(state) for state, _ in run(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))]
    assert [s["epoch"] for s in resumed] == [2, 3] and resumed[-1]["resumed_from_epoch"] == 1
    assert (
        resumed[-1]["history"] == states[-1]["history"] and resumed[-1]["best"]["epoch"] == states[-1]["best"]["epoch"]
    )
    # its epochs' time counts the first attempt's epoch too
    assert 0 < states[0]["train_seconds"] < resumed[0]["train_seconds"] < resumed[-1]["train_seconds"]


def test_a_run_is_named_by_what_changes_its_weights():
    base = SasrecConfig()
    name = sasrec.run_name(base, "/store", prepared="prepared-1")
    assert sasrec.run_name(SasrecConfig(max_epochs=500, patience=40), "/store", prepared="prepared-1") == name
    assert sasrec.run_name(SasrecConfig(model=SasrecArgs(dropout=0.1)), "/store", prepared="prepared-1") != name
    assert sasrec.run_name(base, "/store", prepared="prepared-2") != name
    assert sasrec.run_name(base, "/store", prepared="prepared-1", teacher="t1") != name
    # settings added later are named only when set (the runs made before them keep their names)
    assert (
        sasrec.run_name(SasrecConfig(softmax="auto", sampled_negatives=1024), "/store", prepared="prepared-1") == name
    )
    assert sasrec.run_name(SasrecConfig(softmax="sampled"), "/store", prepared="prepared-1") != name


def test_positions_from_end_give_the_latest_item_the_same_position():
    torch.manual_seed(0)
    model = sasrec.SASRec(50, ORIGINAL_INPUTS).eval()
    with torch.no_grad():
        short, long = model(torch.tensor([[7, 0, 0]])), model(torch.tensor([[3, 9, 7]]))
        model.blocks = torch.nn.ModuleList()  # the input alone: the latest item, the same position
        assert torch.allclose(model(torch.tensor([[7, 0, 0]]))[0, 0], model(torch.tensor([[3, 9, 7]]))[0, 2])
    assert not torch.allclose(short[0, 0], long[0, 2])  # with attention, what came before still counts


def test_sparse_item_updates_move_only_the_rows_a_step_reads(prepared_tables):
    """sasrec.item_updates=sparse: with the sampled softmax a step reads some item rows and lazy Adam moves only
    those, so a step costs the same whatever the catalogue; it trains through the usual loop and checkpoints."""
    users, items = prepared_tables
    cfg = SasrecConfig(model=SMALL, batch_size=32, softmax="sampled", sampled_negatives=16, item_updates="sparse")
    torch.manual_seed(0)
    core = sasrec.SASRec(items.num_rows, SMALL)
    optimizer = sasrec.optimizer_for(core, list(core.parameters()), cfg, sasrec.Extras(), sampled=True)
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    batches = sasrec.training_batches(tokens, 32, SMALL.max_len, np.random.default_rng(0))
    softmax = sasrec.choose_softmax(cfg, items["train_popularity"].to_numpy())
    for _ in range(2):  # the second step: Adam's moments of rows read before do not move rows unread now
        before = core.item_emb.weight.detach().clone()
        sasrec.train_one_epoch(core, optimizer, itertools.islice(batches, 1), torch.device("cpu"), softmax=softmax)
        read = set(core.item_emb.weight.grad.coalesce().indices()[0].tolist())
        moved = set(torch.nonzero((core.item_emb.weight.detach() != before).any(1)).flatten().tolist())
        assert moved and moved <= read and len(read) < items.num_rows // 2
    for wrong in ({"softmax": "full"}, {"weight_decay": 0.1}):
        with pytest.raises(ValueError, match="item_updates=sparse needs the sampled softmax"):
            sasrec.optimizer_for(core, list(core.parameters()), cfg.model_copy(update=wrong), sasrec.Extras(),
                                 sampled="softmax" not in wrong)  # fmt: skip
    state, record = next(sasrec.train(users, items, cfg.model_copy(update={"max_epochs": 1}), HistoryRule(), "cpu"))
    assert set(state["current"]["optimizer"]) == {"dense", "sparse"} and record["valid"]["users"] == users.num_rows
