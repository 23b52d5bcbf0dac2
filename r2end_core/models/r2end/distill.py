"""Reasoning distillation (paper §3.2): the student learns history text -> the teacher's target embedding.

    e_u   = Enc_S(H_u)                  the student on the user's raw history text
    e_u^R = Enc(M_target ⊕ R_u)         the target (see models.r2end.targets)
    L     = mean_u |e_u - e_u^R|^2

``train_student`` is the training loop (DeepSpeed); ``ray_jobs/distill.py`` runs it on Ray Train workers.
The student trains in train mode (dropout on), as any fine-tuning does: transformers loads models
in eval mode.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
import torch

from r2end_core import schemas, storage
from r2end_core.config import DistillConfig, DistillTarget, DistillUsers, EmbedConfig
from r2end_core.layout import Layout
from r2end_core.schemas import to_matrix
from r2end_core.summaries import Distances, DistillSummary
from r2end_core.text import encoders
from r2end_core.train import random_state, sharding

#: distill.target -> (row kind in the targets table, rejection-sampled users only)
TARGET_ROWS = {
    DistillTarget.ORACLE: ("oracle", False),
    DistillTarget.UNGUIDED_ALL: ("unguided", False),
    DistillTarget.UNGUIDED_GROUNDED: ("unguided", True),
    DistillTarget.METADATA: ("metadata", False),
}


def select_targets(
    targets: pa.Table, target: DistillTarget, users: DistillUsers = DistillUsers.WITH_REASONING
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(user ids, ``[users, dim]`` target embeddings, whether each holds the teacher's text) for one
    ``distill.target`` and ``distill.users`` setting. ``metadata`` with ``with_reasoning``: the oracle users'
    metadata targets (ablation 3, on the same users as R2END); with ``all``: every user's. A teacher target
    with ``all``: the teacher's where it wrote one, the metadata target for the other users."""
    kind, accepted_only = TARGET_ROWS[target]
    rows = targets.filter(pc.equal(targets["target"], kind))
    if accepted_only:
        rows = rows.filter(pc.fill_null(rows["accepted"], False))
    metadata = targets.filter(pc.equal(targets["target"], "metadata"))
    if target == DistillTarget.METADATA and users == DistillUsers.WITH_REASONING:
        rows = rows.filter(pc.is_in(rows["user_id"], targets.filter(pc.equal(targets["target"], "oracle"))["user_id"]))
    if rows.num_rows == 0:
        raise ValueError(
            f"distill.target={target}: the targets table has no '{kind}' rows"
            + (" accepted by rejection sampling" if accepted_only else "")
            + (" for users with oracle reasoning" if kind == "metadata" else "")
            + "; run the embed stage"
        )
    with_text = np.full(rows.num_rows, kind != "metadata")
    if users == DistillUsers.ALL and kind != "metadata":
        rest = metadata.filter(pc.invert(pc.is_in(metadata["user_id"], rows["user_id"])))
        rows = pa.concat_tables([rows, rest])
        with_text = np.concatenate([with_text, np.zeros(rest.num_rows, dtype=bool)])
    return rows.column("user_id").to_pylist(), to_matrix(rows["embedding"]), with_text


def split_holdout(user_ids: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the users that train the student and of those held out to measure it. Which
    users are held out depends on the set of ids, not on their order, so runs on the same users
    (say, two teachers' answers) train and measure on the same ones.

    >>> train, held = split_holdout(list("abcdefghij"), 0.2, 0)
    >>> len(train), len(held), sorted(set(train) | set(held)) == list(range(10))
    (8, 2, True)
    >>> reverse = list("jihgfedcba")
    >>> [list("abcdefghij")[i] for i in held] == sorted(reverse[i] for i in split_holdout(reverse, 0.2, 0)[1])
    True
    """
    order = np.argsort(user_ids, kind="stable")[np.random.default_rng(seed).permutation(len(user_ids))]
    n_held = int(round(fraction * len(user_ids)))
    if n_held >= len(user_ids):
        raise ValueError(f"holdout_fraction={fraction} leaves no user to distill from ({len(user_ids)} users)")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def batch_rows(
    n_rows: int, batch_size: int, epoch: int, seed: int, world: int = 1, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """The global batches of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees the
    same batches from the step it stopped at, and every rank the same ones (``train.sharding``). With
    ``lengths`` (tokens per row), rows of similar length share a batch: each pool of ``POOL_BATCHES``
    batches of the permutation is sorted by length and cut, then the batches are shuffled (a short last
    batch stays last), so a batch pads less and the epoch still sees every row once.

    >>> [b.tolist() for b in batch_rows(5, 2, 0, 0)] == [b.tolist() for b in batch_rows(5, 2, 0, 0)]
    True
    >>> [len(b) for b in batch_rows(5, 2, 0, 0)], [len(b) for b in batch_rows(5, 2, 0, 0, world=2)]
    ([2, 2, 1], [2, 3])
    >>> bucketed = batch_rows(7, 2, 0, 0, lengths=np.array([5, 90, 6, 91, 7, 92, 50]))
    >>> sorted(np.concatenate(bucketed).tolist()), [len(b) for b in bucketed][-1]
    ([0, 1, 2, 3, 4, 5, 6], 1)
    >>> all(max(np.array([5, 90, 6, 91, 7, 92, 50])[b]) - min(np.array([5, 90, 6, 91, 7, 92, 50])[b]) <= 44
    ...     for b in bucketed)
    True
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_rows)
    if lengths is None:
        return sharding.cut(order, batch_size, world)
    batches = []
    for start in range(0, n_rows, batch_size * POOL_BATCHES):
        pool = order[start : start + batch_size * POOL_BATCHES]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    short = [batches.pop()] if len(batches[-1]) < batch_size else []
    return sharding.join_small_tail([batches[i] for i in rng.permutation(len(batches))] + short, world)


POOL_BATCHES = 64  # batches whose rows are sorted by length together: wide enough to group, narrow enough to mix


def token_lengths(model, texts: list[str]) -> np.ndarray:
    """Tokens per text as the student reads it (cut at its max length)."""
    encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return np.array([len(ids) for ids in encoded])


def load_student(encoder: str, device: str, max_seq_length: int):
    """The student before training: Enc itself, reading the end of long history texts (the latest
    purchases), in train mode. transformers loads weights in eval mode, which would leave dropout off."""
    return encoders.load_encoder(encoder, device, max_seq_length, keep="end").train()


CHECKPOINT_TAG = "student"  # DeepSpeed's folder name inside a checkpoint ("latest" is its own pointer file)


def train_student(
    cfg: DistillConfig,
    ec: EmbedConfig,
    examples: pa.Table,
    model_path: str,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    restored: str | None = None,
    held_out: pa.Table | None = None,
) -> Iterator[tuple[dict, Callable[[str], None]]]:
    """The student's training loop with DeepSpeed, one data-parallel rank of ``world``. Yields every
    ``cfg.checkpoint_every`` steps (and at the end) a report and a function that saves a checkpoint into
    a folder (``restored``: such a folder to go on from). Ends with the student saved whole, in fp32, as a
    sentence-transformers folder at ``model_path`` (by rank 0). With ``cfg.patience`` and ``held_out``
    (schemas.DISTILL_EXAMPLES), each epoch ends with the held-out users' loss: the student saved is the
    epoch with the lowest, and training stops after ``patience`` epochs without a lower one."""
    import deepspeed  # only where it trains: importing it logs accelerator warnings

    # On CPU, DeepSpeed's process group JIT-compiles a shared-memory all-reduce kernel (C++: about a minute on 2
    # cores, again in each new environment) that only its inference all-reduce calls; training needs none.
    if torch.device(device).type == "cpu":  # (on GPU the kernel's builder does not exist: nothing to skip)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    torch.manual_seed(cfg.seed)
    model = load_student(ec.encoder, str(device), ec.max_seq_length)
    texts, targets = examples.column("history_text").to_pylist(), torch.from_numpy(to_matrix(examples["target"]))
    lengths = token_lengths(model, texts) if cfg.length_buckets else None
    per_epoch = len(batch_rows(len(texts), cfg.batch_size, 0, cfg.seed, world, lengths))
    total = cfg.epochs * per_epoch
    validated = cfg.patience is not None and held_out is not None and held_out.num_rows > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, world))
    state = {"step": 0, "resumed_from_step": 0, "losses": [], "train_seconds": 0.0, "held_out_losses": []}
    rng_file = f"random_state-{rank}.pt"  # each rank's own: ranks with unequal shares draw differently
    if restored:
        saved = engine.load_checkpoint(restored, tag=CHECKPOINT_TAG)[1]  # with DeepSpeed's own keys
        state.update({key: saved[key] for key in state if key in saved})
        random_state.restore(torch.load(os.path.join(restored, rng_file), weights_only=True))
    state["resumed_from_step"] = state["step"]
    started = time.time() - state["train_seconds"]  # training time summed over every attempt

    def save(folder: str) -> None:
        engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, client_state=state)
        torch.save(random_state.capture(), os.path.join(folder, rng_file))  # the dropout masks go on as they would

    while state["step"] < total and not stopped(state["held_out_losses"], cfg.patience, cfg.min_improvement):
        epoch, index = divmod(state["step"], per_epoch)
        batch = batch_rows(len(texts), cfg.batch_size, epoch, cfg.seed, world, lengths)[index]
        rows = sharding.share(batch, rank, world)
        features = model.preprocess([texts[i] for i in rows])
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        loss = distillation_loss(engine(features)["sentence_embedding"], targets[rows].to(device))
        engine.backward(loss * sharding.loss_scale(len(rows), len(batch), world))
        engine.step()
        state["losses"].append(round(loss.item(), 6))
        state["step"] += 1
        if validated and state["step"] % per_epoch == 0:
            state["held_out_losses"].append(round(held_out_loss(engine, model, held_out, device), 6))
            if np.argmin(state["held_out_losses"]) == len(state["held_out_losses"]) - 1:  # a new best epoch
                save_student(model, ec, model_path, rank)
        last = state["step"] == total or stopped(state["held_out_losses"], cfg.patience, cfg.min_improvement)
        if state["step"] % cfg.checkpoint_every == 0 or last:
            state["train_seconds"] = round(time.time() - started, 1)
            yield report(state, total, validated, last), save
    if state["resumed_from_step"] == state["step"]:  # a finished run started again: its last report again
        yield report(state, total, validated, True), save
    if not validated:
        save_student(model, ec, model_path, rank)


def report(state: dict, total: int, validated: bool, last: bool) -> dict:
    """What a checkpoint interval reports: the whole list of losses comes with the last report only."""
    shown = {"total_steps": total, "loss": state["losses"][-1], **state}
    if validated:
        shown["best_epoch"] = int(np.argmin(state["held_out_losses"])) + 1 if state["held_out_losses"] else 0
    if not last:
        shown.pop("losses")
    return shown


def stopped(held_out_losses: list[float], patience: int | None, min_improvement: float = 0.0) -> bool:
    """Whether the last ``patience`` epochs all failed to lower the held-out loss by ``min_improvement``
    (relative) below the best before them.

    >>> stopped([0.5, 0.4, 0.41], 1), stopped([0.5, 0.4, 0.41], 2), stopped([0.5, 0.4], None)
    (True, False, False)
    >>> stopped([0.5, 0.4, 0.3999], 1), stopped([0.5, 0.4, 0.3999], 1, 0.001), stopped([0.5, 0.4, 0.39], 1, 0.001)
    (False, True, False)
    """
    return bool(
        patience
        and len(held_out_losses) > patience
        and min(held_out_losses[-patience:]) >= min(held_out_losses[:-patience]) * (1 - min_improvement)
    )


@torch.no_grad()
def held_out_loss(engine, model, held_out: pa.Table, device: torch.device, batch_size: int = 32) -> float:
    """The distillation loss on held-out users (dropout off), through the engine so ZeRO-3's parts gather."""
    texts, targets = held_out.column("history_text").to_pylist(), torch.from_numpy(to_matrix(held_out["target"]))
    engine.eval()
    total = 0.0
    for start in range(0, len(texts), batch_size):
        features = model.preprocess(texts[start : start + batch_size])
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        embedded = engine(features)["sentence_embedding"]
        total += distillation_loss(embedded, targets[start : start + batch_size].to(device)).item() * len(embedded)
    engine.train()
    return total / len(texts)


def save_student(model, ec: EmbedConfig, model_path: str, rank: int) -> None:
    """The student whole, in fp32, as a sentence-transformers folder (rank 0). ZeRO-3 splits the weights
    across workers: every rank joins the gathering."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        weights = {k: v.detach().float().clone() for k, v in model.state_dict().items()} if rank == 0 else None
    if rank == 0:
        student = encoders.load_encoder(ec.encoder, "cpu", ec.max_seq_length, keep="end")
        student.load_state_dict(weights)
        with tempfile.TemporaryDirectory() as folder:
            student.save(folder)
            storage.copy_folder(folder, model_path)


def distillation_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: squared L2 distance per user, averaged over users.

    >>> distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item()
    2.0
    """
    return (student.float() - target.float()).pow(2).sum(-1).mean()


def distances(student: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: L2 distance and cosine similarity between student and target embeddings.

    >>> l2, cos = distances(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]))
    >>> round(float(l2[0]), 4), float(cos[0])
    (2.2361, 0.0)
    """
    l2 = np.linalg.norm(student - target, axis=1)
    cos = (student * target).sum(1) / (np.linalg.norm(student, axis=1) * np.linalg.norm(target, axis=1))
    return l2, cos


def deepspeed_config(cfg: DistillConfig, world_size: int) -> dict:
    """DeepSpeed settings for one run: the global batch split evenly across workers, no fp16 (CPU
    has none); the optimizer is a torch one passed in, so no DeepSpeed op needs compiling."""
    if cfg.batch_size % world_size:
        raise ValueError(f"distill.batch_size={cfg.batch_size} does not split over {world_size} workers")
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def examples(users: pa.Table, targets: pa.Table, cfg: DistillConfig) -> tuple[pa.Table, pa.Table, int]:
    """(training examples, held-out examples, how many training examples hold the teacher's text),
    schemas.DISTILL_EXAMPLES: each user's training history text and the target embedding ``cfg.target``
    and ``cfg.users`` select."""
    history = dict(zip(users.column("user_id").to_pylist(), users.column("train_history_text").to_pylist()))
    user_ids, vectors, with_text = select_targets(targets, cfg.target, cfg.users)
    train, held = split_holdout(user_ids, cfg.holdout_fraction, cfg.seed)

    def table(rows: np.ndarray) -> pa.Table:
        ids = [user_ids[i] for i in rows]
        return pa.table(
            {"user_id": ids, "history_text": [history[u] for u in ids], "target": schemas.vector_column(vectors[rows])},
            schema=schemas.DISTILL_EXAMPLES,
        )

    return table(train), table(held), int(with_text[train].sum())


def run_name(cfg: DistillConfig, embeddings_digest: str, storage_path: str) -> str:
    """The Ray Train run of a student: the same settings and embeddings give the same name, so a re-run
    resumes its run. ``epochs`` and ``min_improvement`` are left out, so raising the one or lowering the other
    continues a finished run, and so is ``checkpoint_every``, which does not change the weights."""
    settings = {
        "distill": cfg.model_dump(mode="json", exclude={"epochs", "min_improvement", "checkpoint_every"}),
        "embeddings": embeddings_digest,
        "storage_path": storage_path,
        "holdout": "by-user-id",  # runs that split by row order held out other users: never resume them
    }
    return f"distill-{cfg.run_name}-{storage.digest(settings)}"


#: what a student learns from, written into its folder as its run starts
EXAMPLE_FILES = ("examples.parquet", "held_out.parquet")


def start_run(layout: Layout, cfg: DistillConfig, examples: pa.Table, held_out: pa.Table) -> None:
    """A run's start in its folder: the summary of the folder's last run removed (its model is about to change;
    a folder holds ``metrics.json`` only while its model, examples and summary are one finished run's), then
    the examples written."""
    if storage.exists(summary := layout.student(cfg.run_name, "metrics.json")):
        storage.delete_file(summary)
    for name, table in zip(EXAMPLE_FILES, (examples, held_out)):
        storage.write_table(table, layout.student(cfg.run_name, name))


def distilled_before(layout: Layout, cfg: DistillConfig, ec: EmbedConfig) -> tuple[str, DistillSummary] | None:
    """(its run name, its summary) for another finished student under the storage path that learnt exactly
    what ``cfg.run_name`` is about to, from its folder's ``EXAMPLE_FILES`` written already (``start_run``):
    the same settings (all but the run name and ``checkpoint_every``) and encoder, from the same examples and
    held-out users (the files' sha256). Its model is what this run would train again, e.g. where a
    teacher-data sample changes only what distillation does not read (the items' descriptions). None if there
    is none."""
    mine = [storage.sha256(layout.student(cfg.run_name, name)) for name in EXAMPLE_FILES]
    settings = cfg.model_dump(mode="json", exclude={"run_name", "checkpoint_every"})
    for folder in storage.subfolders(layout.path("students")):
        other = folder.rstrip("/").rsplit("/", 1)[-1]
        summary_path = layout.student(other, "metrics.json")
        if other == cfg.run_name or not storage.exists(summary_path):  # no summary: not a finished run
            continue
        try:
            summary = DistillSummary.model_validate(storage.read_json(summary_path))
        except pydantic.ValidationError:  # a summary of an older layout: not comparable
            continue
        learnt = {k: v for k, v in summary.config.items() if k not in ("run_name", "checkpoint_every")}
        if (summary.encoder, summary.max_seq_length, learnt) != (ec.encoder, ec.max_seq_length, settings):
            continue
        files = [layout.student(other, name) for name in EXAMPLE_FILES]
        if all(storage.exists(f) and storage.sha256(f) == h for f, h in zip(files, mine)):
            return other, summary
    return None


def distance_table(
    user_ids: list[str], targets: np.ndarray, before: np.ndarray, after: np.ndarray
) -> tuple[pa.Table, dict]:
    """Per held-out user (schemas.DISTANCES) and summarised: L2 and cosine between the target and Enc's
    embedding of the history (before) and the student's (after)."""
    (l2_before, cos_before), (l2_after, cos_after) = distances(before, targets), distances(after, targets)
    columns = {"l2_before": l2_before, "l2_after": l2_after, "cos_before": cos_before, "cos_after": cos_after}
    summary = {
        name: Distances(mean=round(float(v.mean()), 4), median=round(float(np.median(v)), 4))
        for name, v in columns.items()
    }
    return pa.table({"user_id": user_ids, **columns}, schema=schemas.DISTANCES), summary
