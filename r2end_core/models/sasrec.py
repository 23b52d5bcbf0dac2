"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy, and its recommender.

Causal self-attention over item ids with learned positions; the output at each position is scored
against every item embedding (tied input/output embeddings). Item index 0 is padding, so catalogue
item ``i`` (its ``item_index``) is token ``i + 1``. ``train`` is its training loop, which
``ray_jobs/train_sasrec.py`` runs on Ray Train workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from r2end_core import schemas, storage
from r2end_core.config import HistoryRule, SasrecArgs, SasrecConfig
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.data.splits import Split, index_sequences, training_part
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest
from r2end_core.train import selection, sharding

WEIGHTS_FILE = "model.pt"


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
    """Next-item model: ``forward(tokens) -> hidden states``; ``catalogue_logits`` scores the catalogue.

    Sequences are right-padded with 0, so causal attention never lets a real position see
    padding, and position ``p`` always means "the p-th item the model reads".

    >>> model = SASRec(n_items=100, args=SasrecArgs(hidden_size=8, num_heads=2, max_len=5))
    >>> model.last_hidden(torch.tensor([[3, 7, 0], [5, 0, 0]]), torch.tensor([2, 1])).shape
    torch.Size([2, 8])
    """

    def __init__(self, n_items: int, args: SasrecArgs):
        super().__init__()
        self.n_items = n_items
        self.max_len = args.max_len
        self.item_emb = nn.Embedding(n_items + 1, args.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(args.max_len, args.hidden_size)
        self.emb_drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(args.hidden_size, args.num_heads, args.inner_size, args.dropout)
            for _ in range(args.num_layers)
        )
        self.final_norm = nn.LayerNorm(args.hidden_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
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
    train_sequences: list[np.ndarray],
    batch_size: int,
    max_len: int,
    rng: np.random.Generator,
    rank: int = 0,
    world: int = 1,
    pool_batches: int = 50,
):
    """Shuffled ``(inputs, targets, global_positions)`` batches of this rank: predict token t+1 from tokens
    <= t at every position; ``global_positions`` counts the predicted positions of the whole global batch.

    ``train_sequences`` are token sequences (item_index + 1) of each user's training part, the same on
    every rank (as is ``rng``'s seed): ranks build the same global batches and take their share of each
    (``train.sharding``). Most users are short and a few are long, so a random batch would nearly
    always pad to ``max_len``: users are shuffled, sorted by length within pools of ``pool_batches``
    batches, and the batches are shuffled again, which keeps padding small and the order random.
    """
    train_sequences = [s for s in train_sequences if len(s) >= 2]  # a single item predicts nothing
    order = rng.permutation(len(train_sequences))
    lengths = np.array([min(len(s), max_len + 1) for s in train_sequences])
    batches = []
    for start in range(0, len(order), batch_size * pool_batches):
        pool = order[start : start + batch_size * pool_batches]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    batches = sharding.join_small_tail(batches, world)
    for index in rng.permutation(len(batches)):
        rows = sharding.share(batches[index], rank, world)
        chunk = [train_sequences[i][-(max_len + 1) :] for i in rows]
        inputs, _ = pad_right([s[:-1] for s in chunk], max_len)
        targets, _ = pad_right([s[1:] for s in chunk], max_len)
        yield inputs, targets, int((lengths[batches[index]] - 1).sum())


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches, device: torch.device, world: int = 1
) -> float:
    """One pass of full-softmax cross-entropy; returns the mean loss per predicted position (this rank's)."""
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model.train()
    total, count = 0.0, 0
    for inputs, targets, global_positions in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = model(inputs)
        real = targets > 0
        logits = core.catalogue_logits(hidden[real])
        loss = F.cross_entropy(logits, targets[real] - 1)
        optimizer.zero_grad(set_to_none=True)
        (loss * sharding.loss_scale(int(real.sum()), global_positions, world)).backward()
        optimizer.step()
        total += loss.item() * int(real.sum())
        count += int(real.sum())
    return total / max(count, 1)


def user_vectors(
    model: SASRec, token_sequences: list[np.ndarray], device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """The last hidden state after each sequence, computed in length-sorted batches (little padding)."""
    order = np.argsort([min(len(s), model.max_len) for s in token_sequences], kind="stable")
    out = torch.empty(len(token_sequences), model.item_emb.embedding_dim, device=device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens, lengths = pad_right([token_sequences[r] for r in rows], model.max_len)
        out[torch.as_tensor(rows, device=device)] = model.last_hidden(tokens.to(device), lengths.to(device))
    return out


def train(
    users: pa.Table,
    items: pa.Table,
    cfg: SasrecConfig,
    history: HistoryRule,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    restored: dict | None = None,
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
) -> Iterator[tuple[dict, dict]]:
    """Train on the prepared tables, one rank of ``world`` (``wrap``: the data-parallel wrapper), selecting
    on validation NDCG@10; yields ``selection.epochs``' (state, record) after each epoch (``restored``: a
    state it yielded, to go on from)."""
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    valid = EvalSet.build(users, items, Split.VALID, cfg.mask_history)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    core = SASRec(items.num_rows, cfg.model).to(device)
    model = wrap(core)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scorer = SasrecRecommender(core, valid.item_ids, manifest("", cfg.model, items.num_rows, history, {}), str(device))
    rng = np.random.default_rng(cfg.seed)
    if restored:  # go on from the last epoch
        core.load_state_dict(restored["current"]["model"])
        optimizer.load_state_dict(restored["current"]["optimizer"])
        rng.bit_generator.state = restored["current"]["rng"]
        torch.set_rng_state(restored["current"]["torch_rng"])

    def train_epoch(epoch: int) -> dict:
        batches = training_batches(tokens, cfg.batch_size, cfg.model.max_len, rng, rank, world)
        return {"loss": train_one_epoch(model, optimizer, batches, device, world)}

    yield from selection.epochs(
        restored,
        cfg.max_epochs,
        train_epoch,
        lambda: evaluate(scorer, valid, str(device)).metrics,
        lambda: {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        },  # batch order and dropout masks go on as they would have
        cfg.eval_every,
        cfg.patience,
    )


def run_name(cfg: SasrecConfig, prepared_digest: str, storage_path: str) -> str:
    """The Ray Train run of these settings on this prepared data: a re-run resumes it. ``max_epochs`` and
    ``patience`` are left out, so raising them continues a finished run."""
    settings = {
        "sasrec": cfg.model_dump(mode="json", exclude={"max_epochs", "patience"}),
        "prepared": prepared_digest,
        "storage_path": storage_path,
    }
    return f"{cfg.run_name}-{storage.digest(settings)}"


def manifest(name: str, args: SasrecArgs, n_items: int, history: HistoryRule, inputs: dict[str, str]) -> ModelManifest:
    return ModelManifest(
        kind="sasrec",
        name=name,
        args=args.model_dump(),
        reads="item_ids",
        similarity="dot",
        history=history,
        items=n_items,
        inputs=inputs,
    )


class SasrecRecommender:
    """SASRec behind the recommender interface: a history of item ids -> the last hidden state."""

    def __init__(self, module: SASRec, item_ids: list[str], manifest: ModelManifest, device: str = "cpu"):
        self.module, self.item_ids, self.manifest = module, item_ids, manifest
        self.device = torch.device(device)
        self.token = {item_id: row + 1 for row, item_id in enumerate(item_ids)}

    def user_vectors(self, histories: Histories) -> np.ndarray:
        unknown = [i for ids in histories.item_ids for i in ids if i not in self.token]
        if unknown:
            raise UnknownItemsError(list(dict.fromkeys(unknown)))
        tokens = [np.array([self.token[i] for i in ids], dtype=np.int64) for ids in histories.item_ids]
        self.module.eval()
        with torch.no_grad():
            return user_vectors(self.module, tokens, self.device).cpu().numpy()

    def item_vectors(self) -> np.ndarray:
        return self.module.item_emb.weight[1:].detach().cpu().numpy()

    def new_item_vectors(self, metadata_texts: list[str]) -> np.ndarray:
        raise ValueError("SASRec learns one embedding per item id: new items need a model trained with them")

    def write_files(self, folder: str) -> None:
        """The version folder's files (``models.base.save``): weights with the model arguments, and items."""
        state = {"args": self.manifest.args, "n_items": self.module.n_items, "state": self.module.state_dict()}
        torch.save(state, os.path.join(folder, WEIGHTS_FILE))
        storage.write_table(
            pa.table({"item_id": self.item_ids}, schema=schemas.MODEL_ITEMS), os.path.join(folder, "items.parquet")
        )

    @classmethod
    def load(cls, layout: Layout, manifest: ModelManifest, device: str = "cpu") -> SasrecRecommender:
        folder = layout.model_version(manifest.name, manifest.version)
        with storage.open_input(storage.join(folder, WEIGHTS_FILE)) as src:
            saved = torch.load(src, map_location=device, weights_only=True)
        module = SASRec(saved["n_items"], SasrecArgs(**saved["args"])).to(device)
        module.load_state_dict(saved["state"])
        item_ids = storage.read_table(storage.join(folder, "items.parquet")).column("item_id").to_pylist()
        return cls(module.eval(), item_ids, manifest, device)
