"""SASRec pieces on real Beauty sequences."""

import numpy as np
import torch

from r2end_core import data, metrics, sasrec
from r2end_core.config import PrepareConfig, SasrecConfig

SMALL = SasrecConfig(hidden_size=32, num_heads=2, inner_size=64, max_len=20, dropout=0.2, batch_size=64)


def beauty_sequences(path):
    prepared = data.load_and_validate(path, PrepareConfig(dataset_path=path))
    texts = data.metadata_texts(prepared)
    users = data.build_user_rows(data.sequences_table(prepared), texts, 8, 60)
    items = data.build_item_table(prepared, texts, 10)
    return data.index_sequences(users, items), items


def test_batches_cover_every_training_position_once(beauty_dir):
    sequences, _ = beauty_sequences(beauty_dir)
    train = [data.training_part(s) + 1 for s in sequences]
    seen = []
    for inputs, targets in sasrec.training_batches(train, 32, max_len=20, rng=np.random.default_rng(0), pool_batches=3):
        real = targets > 0
        assert torch.equal(inputs[:, 1:][real[:, 1:]], targets[:, :-1][real[:, 1:]])  # targets are inputs shifted
        seen.append(int(real.sum()))
    assert sum(seen) == sum(min(len(s), 21) - 1 for s in train)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = sasrec.SASRec(50, SMALL).eval()
    a = torch.tensor([[3, 9, 4, 7]])
    b = torch.tensor([[3, 9, 4, 12]])
    assert torch.allclose(model(a)[0, :3], model(b)[0, :3])
    assert not torch.allclose(model(a)[0, 3], model(b)[0, 3])


def test_batched_user_vectors_match_one_at_a_time(beauty_dir):
    sequences, items = beauty_sequences(beauty_dir)
    torch.manual_seed(0)
    model = sasrec.SASRec(items.num_rows, SMALL).eval()
    tokens = [s[:-1] + 1 for s in sequences[:40]]
    batched = sasrec.user_vectors(model, tokens, torch.device("cpu"), batch_size=16)
    with torch.no_grad():
        single = torch.stack(
            [model(torch.as_tensor(t[-SMALL.max_len :])[None])[0, -1] for t in tokens]
        )
    assert torch.allclose(batched, single, atol=1e-5)


def test_training_lowers_loss_and_beats_untrained(beauty_dir):
    sequences, items = beauty_sequences(beauty_dir)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = sasrec.SASRec(items.num_rows, SMALL)
    tail = metrics.long_tail_mask(np.asarray(items.column("train_popularity").to_pylist()))
    before = sasrec.evaluate(model, sequences, "valid", tail)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    train = [data.training_part(s) + 1 for s in sequences]
    losses = [
        sasrec.train_one_epoch(model, optimizer, sasrec.training_batches(train, 64, 20, rng), torch.device("cpu"))
        for _ in range(8)
    ]
    after = sasrec.evaluate(model, sequences, "valid", tail)
    assert losses[-1] < losses[0] - 0.5
    assert after["ndcg@20"] > before["ndcg@20"]
    assert {"hr@10", "ndcg@10", "coverage@10", "tail_hr@10"} <= set(after)
