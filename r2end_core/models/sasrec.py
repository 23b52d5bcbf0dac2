"""SASRec (Kang & McAuley, 2018) trained with full-softmax cross-entropy, and its recommender.

Causal self-attention over item ids with learned positions; the output at each position is scored
against every item embedding (tied input/output embeddings). Item index 0 is padding, so catalogue
item ``i`` (its ``item_index``) is token ``i + 1``. ``train`` is its training loop, which
``ray_jobs/train_sasrec.py`` runs on Ray Train workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from r2end_core import schemas, storage
from r2end_core.config import HistoryRule, SasrecArgs, SasrecConfig, SoftmaxKind
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.data.splits import Split, index_sequences, training_part
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest
from r2end_core.train import random_state, selection, sharding

WEIGHTS_FILE = "model.pt"
log = logging.getLogger("r2end")


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
    padding, and position ``p`` always means "the p-th item the model reads". With ``feature_dim``,
    each item's input embedding adds ``feature_weight`` times a learned map of a fixed feature vector
    (``set_item_features``; DLLM2Rec's collaborative embedding distillation): the ID embedding is the
    offset that learns what the features miss. Scoring uses the ID embeddings alone, as in DLLM2Rec.

    >>> model = SASRec(n_items=100, args=SasrecArgs(hidden_size=8, num_heads=2, max_len=5))
    >>> model.last_hidden(torch.tensor([[3, 7, 0], [5, 0, 0]]), torch.tensor([2, 1])).shape
    torch.Size([2, 8])
    """

    def __init__(self, n_items: int, args: SasrecArgs, feature_dim: int = 0, feature_weight: float = 0.0):
        super().__init__()
        self.n_items, self.feature_dim, self.feature_weight = n_items, feature_dim, feature_weight
        self.max_len, self.positions_from_end = args.max_len, args.positions_from_end
        self.item_scale = args.hidden_size**0.5 if args.scale_item_embeddings else 1.0
        self.item_emb = nn.Embedding(n_items + 1, args.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(args.max_len, args.hidden_size)
        self.emb_drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(args.hidden_size, args.num_heads, args.inner_size, args.dropout)
            for _ in range(args.num_layers)
        )
        self.final_norm = nn.LayerNorm(args.hidden_size)
        if feature_dim:
            # row 0 (padding) stays zero; saved with the weights, so a loaded model needs no other file
            self.register_buffer("item_features", torch.zeros(n_items + 1, feature_dim))
            self.feature_map = nn.Linear(feature_dim, args.hidden_size, bias=False)
        self.apply(self._init_weights)

    def set_item_features(self, features: torch.Tensor) -> None:
        """``features``: [n_items, feature_dim], in item_index order."""
        self.item_features[1:] = features.to(self.item_features)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, return_layers: bool = False):
        """Hidden states [batch, length, hidden]; with ``return_layers``, also each block's output."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        if self.positions_from_end:  # the last real item gets max_len - 1; padding after it is never attended
            positions = (positions + (self.max_len - (tokens > 0).sum(1, keepdim=True))).clamp(0, self.max_len - 1)
        x = self.item_emb(tokens) * self.item_scale + self.pos_emb(positions)
        if self.feature_dim:
            x = x + self.feature_weight * self.feature_map(self.item_features[tokens])
        x = self.emb_drop(x)
        layers = []
        for block in self.blocks:
            x = block(x)
            layers.append(x)
        return (self.final_norm(x), layers) if return_layers else self.final_norm(x)

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


@dataclass
class Batch:
    """One rank's share of a global training batch: predict ``targets[:, t]`` from ``inputs[:, : t + 1]``.

    ``rows``: each row's sequence (index into the training sequences); ``positions``: where each target
    sits in its training sequence (-1 on padding), for losses that look up per-target knowledge;
    ``global_positions``: predicted positions in the whole global batch; ``loss_positions``: what the
    global batch's summed loss is divided by (``sharding.loss_scale``): ``global_positions`` (the batch's
    mean), or with position weighting the epoch's mean positions per batch, the same for every batch.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    rows: np.ndarray
    positions: torch.Tensor
    global_positions: int
    loss_positions: float


def training_batches(
    train_sequences: list[np.ndarray],
    batch_size: int,
    max_len: int,
    rng: np.random.Generator,
    rank: int = 0,
    world: int = 1,
    pool_batches: int = 50,
    length_buckets: bool = True,
    position_weighted: bool = False,
) -> Iterator[Batch]:
    """Shuffled batches of this rank: predict token t+1 from tokens <= t at every position.

    ``train_sequences`` are token sequences (item_index + 1) of each user's training part, the same on
    every rank (as is ``rng``'s seed): ranks build the same global batches and take their share of each
    (``train.sharding``). Most users are short and a few are long, so a random batch would nearly
    always pad to ``max_len``: users are shuffled, sorted by length within pools of ``pool_batches``
    batches, and the batches are shuffled again, which keeps padding small and the order random. The
    loss is a batch's mean over its predicted positions, so this weighs a short user's positions more
    than a long user's; without ``length_buckets`` batches are random users, as in the usual SASRec
    training. ``position_weighted`` keeps the buckets but divides every batch's summed loss by the same
    count (the epoch's mean positions per batch), so every position weighs the same, as with random
    batches. A sequence of one item predicts nothing and is skipped.
    """
    trainable = np.array([i for i, s in enumerate(train_sequences) if len(s) >= 2], dtype=np.int64)
    order = trainable[rng.permutation(len(trainable))]
    lengths = np.array([min(len(s), max_len + 1) for s in train_sequences])
    batches = []
    for start in range(0, len(order), batch_size * pool_batches):
        pool = order[start : start + batch_size * pool_batches]
        if length_buckets:
            pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    batches = sharding.join_small_tail(batches, world)
    per_batch = float((lengths[order] - 1).sum()) / len(batches)
    for index in rng.permutation(len(batches)):
        rows = sharding.share(batches[index], rank, world)
        chunk = [train_sequences[i][-(max_len + 1) :] for i in rows]
        inputs, _ = pad_right([s[:-1] for s in chunk], max_len)
        targets, _ = pad_right([s[1:] for s in chunk], max_len)
        first = [len(train_sequences[i]) - len(c) + 1 for i, c in zip(rows, chunk)]  # first target's position
        positions = torch.full(targets.shape, -1, dtype=torch.long)
        for row, (start, c) in enumerate(zip(first, chunk)):
            positions[row, : len(c) - 1] = torch.arange(start, start + len(c) - 1)
        global_positions = int((lengths[batches[index]] - 1).sum())
        loss_positions = per_batch if position_weighted else global_positions
        yield Batch(inputs, targets, np.asarray(rows), positions, global_positions, loss_positions)


class FullSoftmax:
    """The cross-entropy over every catalogue item at the batch's predicted positions: exact, at the cost of
    [positions, n_items] scores (and as many log-probabilities and gradients). ``hidden``: [positions,
    hidden] states; ``targets``: their item indices. Auxiliary terms read ``log_probs_of`` and ``top`` from
    the scores it made rather than pay for another pass over the catalogue."""

    def __init__(self, module: SASRec, hidden: torch.Tensor, targets: torch.Tensor):
        self.logits = module.catalogue_logits(hidden)
        self.log_probs = F.log_softmax(self.logits, dim=1)
        self.cross_entropy = F.nll_loss(self.log_probs, targets)

    def log_probs_of(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[len(rows), k] log-probabilities of ``items`` [len(rows), k] at positions ``rows``."""
        return self.log_probs[rows[:, None], items]

    def top(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        """[len(rows), k] the model's k best items at positions ``rows`` (no gradient)."""
        logits = self.logits.detach()  # rows are sorted positions: all of them, or picked out (a copy)
        return (logits if len(rows) == len(logits) else logits[rows]).topk(k, dim=1).indices


class SampledSoftmax:
    """The cross-entropy with its normaliser estimated on a sample of the catalogue, for catalogues whose full
    scores would not fit (gSASRec, eSASRec): the candidates are the batch's targets (in-batch negatives, drawn
    by popularity) and ``negatives`` uniform draws. Each candidate's exp(score) is weighted by how often it
    was drawn over how often it is expected to be (logQ correction), so the normaliser is an unbiased estimate
    of the full one and, with every item drawn often, equals it. Memory: [positions, candidates].

    ``popularity``: [n_items] training counts (the in-batch draws' distribution); the rest as FullSoftmax.
    """

    #: Most scores ``top`` makes at once (64 MB of floats) when it ranks the whole catalogue.
    TOP_CHUNK = 1 << 24

    def __init__(
        self, module: SASRec, hidden: torch.Tensor, targets: torch.Tensor, negatives: int, popularity: torch.Tensor
    ):
        self.module, self.hidden = module, hidden
        n_items = module.n_items
        drawn = torch.randint(n_items, (negatives,), device=hidden.device)
        candidates, counts = torch.unique(torch.cat([targets, drawn]), return_counts=True)
        share = popularity.to(hidden.device, torch.float32).clamp(min=1.0)
        expected = len(targets) * share[candidates] / share.sum() + negatives / n_items
        # a sparse item table (sasrec.item_updates=sparse) is read through its lookup: sparse gradients
        rows = module.item_emb if module.item_emb.sparse else (lambda index: module.item_emb.weight[index])
        scores = hidden @ rows(candidates + 1).T
        self.log_normaliser = torch.logsumexp(scores + (counts / expected).log()[None, :], dim=1)
        target_scores = (hidden * rows(targets + 1)).sum(1)
        self.cross_entropy = (self.log_normaliser - target_scores).mean()

    def log_probs_of(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scores = (self.hidden[rows][:, None, :] * self.module.item_emb.weight[items + 1]).sum(-1)
        return scores - self.log_normaliser[rows][:, None]

    def top(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad():
            hidden = self.hidden.detach()[rows]
            chunk = max(1, self.TOP_CHUNK // self.module.n_items)
            return torch.cat([self.module.catalogue_logits(h).topk(k, dim=1).indices for h in hidden.split(chunk)])


CatalogueScores = FullSoftmax | SampledSoftmax
Softmax = Callable[[SASRec, torch.Tensor, torch.Tensor], CatalogueScores]
"""(model, hidden states at the predicted positions, their target items) -> the batch's CatalogueScores."""

#: Copies of a batch's [positions, n_items] floats the full softmax holds: scores, log-probabilities, gradient.
FULL_SOFTMAX_COPIES = 3


def softmax_kind(cfg: SasrecConfig, n_items: int, world: int = 1) -> SoftmaxKind:
    """``cfg.softmax``, with ``auto`` made sampled when a worker's full-softmax batch would take more than
    ``cfg.full_softmax_max_mb``, else full."""
    positions = -(-cfg.batch_size // world) * cfg.model.max_len
    full_mb = FULL_SOFTMAX_COPIES * positions * n_items * 4 / 2**20
    if cfg.softmax != SoftmaxKind.AUTO:
        return SoftmaxKind(cfg.softmax)
    if full_mb > cfg.full_softmax_max_mb:
        log.info(f"sampled softmax: a full-softmax batch would take {full_mb:,.0f} MB per worker")
        return SoftmaxKind.SAMPLED
    return SoftmaxKind.FULL


def choose_softmax(cfg: SasrecConfig, popularity: np.ndarray, world: int = 1) -> Softmax:
    """The softmax ``softmax_kind`` picks (``popularity``: the catalogue's training counts)."""
    if softmax_kind(cfg, len(popularity), world) == SoftmaxKind.FULL:
        return FullSoftmax
    counts = torch.tensor(np.asarray(popularity), dtype=torch.float32)
    return lambda module, hidden, targets: SampledSoftmax(module, hidden, targets, cfg.sampled_negatives, counts)


@dataclass
class StepOutputs:
    """What one forward pass gives an auxiliary loss: ``hidden`` [batch, length, hidden]; ``layers``, each
    block's output (only when the loss ``needs_layers``); ``real``, the mask of predicted positions;
    ``scores``, the catalogue's scores at them (rows in ``hidden[real]`` order) as the cross-entropy made them;
    ``cross_entropy``, the batch's recommendation loss (detached: for a term that scales itself to it)."""

    hidden: torch.Tensor
    layers: list[torch.Tensor] | None
    real: torch.Tensor
    scores: CatalogueScores
    cross_entropy: torch.Tensor


class AuxiliaryLoss(nn.Module):
    """An extra training term for a SASRec-family student (ranking or profile distillation).

    Subclasses set ``name`` and ``needs_layers`` and implement ``forward(batch, outputs, epoch)``, which
    returns the weighted term per predicted position of the batch (added to the cross-entropy) and its
    unweighted value to log. Its parameters train with the model and are checkpointed with it; serving
    never uses it.
    """

    name = "auxiliary"
    needs_layers = False
    #: the last epoch the term trains in (0: every epoch); early stopping counts validations only after it
    last_epoch = 0

    def forward(self, batch: Batch, outputs: StepOutputs, epoch: int) -> tuple[torch.Tensor, float]:
        raise NotImplementedError


class SplitAdam:
    """Adam on the dense parameters and lazy Adam (``SparseAdam``: the moments of a row move only when a step
    reads it) on a sparse item table; one optimizer to the training loop and its checkpoints."""

    def __init__(self, dense: list[nn.Parameter], sparse: list[nn.Parameter], lr: float, weight_decay: float):
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def optimizer_for(core: SASRec, parameters: list[nn.Parameter], cfg: SasrecConfig, extras: Extras, sampled: bool):
    """Adam over ``parameters``; with ``cfg.item_updates=sparse``, the item table sparse under lazy Adam."""
    if cfg.item_updates == "dense":
        return torch.optim.Adam(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if not sampled or cfg.weight_decay or extras.auxiliary is not None:
        raise ValueError(
            "sasrec.item_updates=sparse needs the sampled softmax (the full one reads every item's row at every "
            "step), weight_decay 0 (lazy Adam has none) and no auxiliary loss (it reads rows densely)"
        )
    core.item_emb.sparse = True
    table = core.item_emb.weight
    return SplitAdam([p for p in parameters if p is not table], [table], cfg.learning_rate, cfg.weight_decay)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    device: torch.device,
    world: int = 1,
    auxiliary: AuxiliaryLoss | None = None,
    epoch: int = 1,
    softmax: Softmax = FullSoftmax,
) -> dict[str, float]:
    """One pass of cross-entropy (``softmax``: over the whole catalogue or sampled; plus ``auxiliary``);
    returns this rank's mean loss per predicted position (``loss``: the cross-entropy) and the auxiliary
    term's mean."""
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model.train()
    totals, count = {"loss": 0.0} | ({auxiliary.name: 0.0} if auxiliary else {}), 0
    for batch in batches:
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        needs_layers = auxiliary is not None and auxiliary.needs_layers
        hidden, layers = model(inputs, return_layers=True) if needs_layers else (model(inputs), None)
        real = targets > 0
        scores = softmax(core, hidden[real], targets[real] - 1)
        loss = scores.cross_entropy
        n = int(real.sum())
        total = loss
        if auxiliary is not None:
            extra, value = auxiliary(batch, StepOutputs(hidden, layers, real, scores, loss.detach()), epoch)
            total = total + extra
            totals[auxiliary.name] += value * n
        optimizer.zero_grad(set_to_none=True)
        (total * sharding.loss_scale(n, batch.loss_positions, world)).backward()
        if auxiliary is not None:
            sharding.average_gradients(auxiliary.parameters(), world)
        optimizer.step()
        totals["loss"] += loss.item() * n
        count += n
    return {name: value / max(count, 1) for name, value in totals.items()}


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


@dataclass
class Extras:
    """What a SASRec-family student adds to the baseline's training: ``item_features`` [n_items, dim] in its
    input embeddings (with ``feature_weight``) and an ``auxiliary`` loss."""

    item_features: np.ndarray | None = None
    feature_weight: float = 0.0
    auxiliary: AuxiliaryLoss | None = None

    def trained_modules(self) -> dict[str, nn.Module]:
        """The student's trained parts besides the SASRec, by name in its checkpoints."""
        return {"auxiliary": self.auxiliary} if self.auxiliary is not None else {}

    def module(self, n_items: int, args: SasrecArgs) -> SASRec:
        """The student's module, its item features set."""
        if self.item_features is None:
            return SASRec(n_items, args)
        module = SASRec(n_items, args, self.item_features.shape[1], self.feature_weight)
        module.set_item_features(torch.from_numpy(self.item_features))
        return module


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
    extras: Extras | None = None,
) -> Iterator[tuple[dict, dict]]:
    """Train on the prepared tables, one rank of ``world`` (``wrap``: the data-parallel wrapper), selecting
    on validation NDCG@10; yields ``selection.epochs``' (state, record) after each epoch (``restored``: a
    state it yielded, to go on from). ``extras``: a student's item features and auxiliary loss (whose
    per-user knowledge is indexed by the row of ``users``)."""
    extras = extras or Extras()
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    valid = EvalSet.build(users, items, Split.VALID, cfg.mask_history)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    core = extras.module(items.num_rows, cfg.model).to(device)
    trained = {name: m.to(device) for name, m in extras.trained_modules().items()}
    model = wrap(core)
    parameters = [*model.parameters(), *(p for m in trained.values() for p in m.parameters())]
    sampled = softmax_kind(cfg, items.num_rows, world) == SoftmaxKind.SAMPLED
    optimizer = optimizer_for(core, parameters, cfg, extras, sampled)
    sasrec_model = manifest("", cfg.model, items.num_rows, history, {})
    scorer = SasrecRecommender(core, valid.item_ids, sasrec_model, str(device))
    rng = np.random.default_rng(cfg.seed)
    softmax = choose_softmax(cfg, items.column("train_popularity").to_numpy(), world)
    if restored:  # go on from the last epoch
        core.load_state_dict(restored["current"]["model"])
        optimizer.load_state_dict(restored["current"]["optimizer"])
        for name, module in trained.items():
            module.load_state_dict(restored["current"][name])
        rng.bit_generator.state = restored["current"]["rng"]
        random_state.restore(restored["current"]["torch_rng"])

    def train_epoch(epoch: int) -> dict:
        batches = training_batches(
            tokens,
            cfg.batch_size,
            cfg.model.max_len,
            rng,
            rank,
            world,
            length_buckets=cfg.length_buckets,
            position_weighted=cfg.position_weighted_loss,
        )
        return train_one_epoch(model, optimizer, batches, device, world, extras.auxiliary, epoch, softmax)

    yield from selection.epochs(
        restored,
        cfg.max_epochs,
        train_epoch,
        lambda: evaluate(scorer, valid, str(device)).metrics,
        lambda: {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            **{name: module.state_dict() for name, module in trained.items()},
            "rng": rng.bit_generator.state,
            "torch_rng": random_state.capture(),
        },  # batch order and dropout masks go on as they would have
        cfg.eval_every,
        cfg.patience,
        patience_after=extras.auxiliary.last_epoch if extras.auxiliary else 0,
    )


def run_name(cfg: SasrecConfig, storage_path: str, **inputs: str) -> str:
    """The Ray Train run of these settings on these inputs (the prepared data's digest, a student's
    knowledge): a re-run resumes it. ``max_epochs`` and ``patience`` are left out, so raising them
    continues a finished run."""
    settings = {
        "sasrec": cfg.model_dump(mode="json", exclude={"max_epochs", "patience"}),
        "storage_path": storage_path,
        **inputs,
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
        module = self.module
        state = {
            "args": self.manifest.args,
            "n_items": module.n_items,
            "feature_dim": module.feature_dim,
            "feature_weight": module.feature_weight,
            "state": module.state_dict(),
        }
        torch.save(state, os.path.join(folder, WEIGHTS_FILE))
        storage.write_table(
            pa.table({"item_id": self.item_ids}, schema=schemas.MODEL_ITEMS), os.path.join(folder, "items.parquet")
        )

    @classmethod
    def load(cls, layout: Layout, manifest: ModelManifest, device: str = "cpu") -> SasrecRecommender:
        folder = layout.model_version(manifest.name, manifest.version)
        with storage.open_input(storage.join(folder, WEIGHTS_FILE)) as src:
            saved = torch.load(src, map_location=device, weights_only=True)
        features = saved.get("feature_dim", 0), saved.get("feature_weight", 0.0)  # absent: saved before features
        module = SASRec(saved["n_items"], SasrecArgs(**saved["args"]), *features).to(device)
        module.load_state_dict(saved["state"])
        item_ids = storage.read_table(storage.join(folder, "items.parquet")).column("item_id").to_pylist()
        return cls(module.eval(), item_ids, manifest, device)
