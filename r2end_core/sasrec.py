"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy.

Causal self-attention over item ids with learned positions; the output at each position is
scored against every item embedding (tied input/output embeddings). Item index 0 is padding,
so catalogue item ``i`` (its ``item_index``) is token ``i + 1``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2end_core import data, metrics
from r2end_core.config import SasrecConfig


class CausalSelfAttentionBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden), nn.Dropout(dropout))
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(hidden, dim=2)
        q, k, v = (t.view(b, length, self.heads, hidden // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.resid_drop(self.out(attended.transpose(1, 2).reshape(b, length, hidden)))
        return x + self.ffn(self.norm2(x))


class SASRec(nn.Module):
    """Next-item model: ``forward(tokens) -> hidden states``; ``item_scores`` ranks the catalogue.

    Sequences are right-padded with 0, so causal attention never lets a real position see
    padding, and position ``p`` always means "the p-th item the model reads".

    >>> model = SASRec(n_items=100, cfg=SasrecConfig(hidden_size=8, num_heads=2, max_len=5))
    >>> model.last_hidden(torch.tensor([[3, 7, 0], [5, 0, 0]]), torch.tensor([2, 1])).shape
    torch.Size([2, 8])
    """

    def __init__(self, n_items: int, cfg: SasrecConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.n_items = n_items
        self.max_len = cfg.max_len
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.emb_drop(self.item_emb(tokens) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def catalogue_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalogue item (padding excluded), indexed by item_index."""
        return hidden @ self.item_emb.weight[1:].T

    def last_hidden(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self(tokens)
        return hidden[torch.arange(tokens.shape[0]), lengths - 1]


def pad_right(sequences: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each sequence's last ``max_len`` tokens and right-pad with 0.

    >>> tokens, lengths = pad_right([np.array([1, 2, 3]), np.array([4])], max_len=2)
    >>> tokens.tolist(), lengths.tolist()
    ([[2, 3], [4, 0]], [2, 1])
    """
    kept = [s[-max_len:] for s in sequences]
    lengths = torch.tensor([len(s) for s in kept])
    tokens = torch.zeros(len(kept), int(lengths.max()), dtype=torch.long)
    for row, s in enumerate(kept):
        tokens[row, : len(s)] = torch.as_tensor(s)
    return tokens, lengths


def training_batches(
    train_sequences: list[np.ndarray], batch_size: int, max_len: int, rng: np.random.Generator, pool_batches: int = 50
):
    """Shuffled (inputs, targets) batches: predict token t+1 from tokens <= t at every position.

    ``train_sequences`` are token sequences (item_index + 1) of each user's training part.
    Most users are short and a few are long, so a random batch would nearly always pad to
    ``max_len``: users are shuffled, sorted by length within pools of ``pool_batches`` batches,
    and the batches are shuffled again, which keeps padding small and the order random.
    """
    order = rng.permutation(len(train_sequences))
    lengths = np.array([min(len(s), max_len + 1) for s in train_sequences])
    batches = []
    for start in range(0, len(order), batch_size * pool_batches):
        pool = order[start : start + batch_size * pool_batches]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    for index in rng.permutation(len(batches)):
        chunk = [train_sequences[i][-(max_len + 1) :] for i in batches[index]]
        inputs, _ = pad_right([s[:-1] for s in chunk], max_len)
        targets, _ = pad_right([s[1:] for s in chunk], max_len)
        yield inputs, targets


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches, device: torch.device
) -> float:
    """One pass of full-softmax cross-entropy; returns the mean loss per predicted position."""
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = model(inputs)
        real = targets > 0
        logits = core.catalogue_logits(hidden[real])
        loss = F.cross_entropy(logits, targets[real] - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * int(real.sum())
        count += int(real.sum())
    return total / max(count, 1)


def user_vectors(model: SASRec, token_sequences: list[np.ndarray], device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """The last hidden state after each sequence, computed in length-sorted batches (little padding)."""
    order = np.argsort([min(len(s), model.max_len) for s in token_sequences], kind="stable")
    out = torch.empty(len(token_sequences), model.item_emb.embedding_dim, device=device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens, lengths = pad_right([token_sequences[r] for r in rows], model.max_len)
        out[torch.as_tensor(rows, device=device)] = model.last_hidden(tokens.to(device), lengths.to(device))
    return out


def evaluate(
    model: SASRec,
    sequences: list[np.ndarray],
    split: str,
    tail_items: np.ndarray | None,
    mask_history: bool = True,
    device: torch.device = torch.device("cpu"),
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on one split ("valid" or "test").

    ``sequences`` are item-index sequences (``data.index_sequences``); the model reads every item
    before the split's target, and those items are masked from the ranking if ``mask_history``.
    """
    inputs, targets = data.split_inputs_targets(sequences, split)
    model.eval()
    with torch.no_grad():
        users = user_vectors(model, [s + 1 for s in inputs], device)
        items = model.item_emb.weight[1:].to(device)

    def score(rows: np.ndarray) -> torch.Tensor:
        return (users[torch.as_tensor(rows)] @ items.T).cpu()

    return metrics.evaluate_ranking(
        score, targets, model.n_items, exclude=inputs if mask_history else None, tail_items=tail_items
    )
