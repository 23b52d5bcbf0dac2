"""What each stage reports about its output, as typed JSON files (paths in ``r2end_core.layout``).

Later stages read these instead of reaching into dict keys: distill and project key their runs on
``EmbedReport.inputs_digest``, project and the text-vector cache name a student by
``DistillSummary.weights_id``.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from r2end_core import storage
from r2end_core.layout import require

#: A metrics dict from ``eval.metrics.ranking_metrics``: {"hr@10": 0.09, "ndcg@10": 0.05, "users": 4000, ...}.
Metrics = dict[str, int | float]  # counts stay integers


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def write(self, path: str) -> None:
        storage.write_json(self.model_dump(mode="json"), path)

    @classmethod
    def read(cls, path: str, stage: str) -> Self:
        """The summary at ``path``, or an error naming the stage that writes it."""
        require(path, stage)
        return cls.model_validate(storage.read_json(path))


class PrepareReport(Summary):
    interactions: int
    users: int
    items: int
    dropped_short_users: int
    items_without_interactions: int | None  # None for a user sample (other users' items are out by design)
    has_timestamps: bool
    metadata_fields: list[str]
    missing_metadata_fields: list[str]
    has_reviews: bool
    sampled: bool


class KindSummary(Summary):
    prompt_version: str
    requested: int
    skipped_done: int
    generated_now: int
    rows: int
    not_generated: int
    failures: int
    truncated_by_token_cap: int
    truncated_to_words: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    in_extended_folders: int


class GenerateSummary(Summary):
    teacher: str
    max_words: int
    token_cap: int
    seconds: float
    seconds_to_first_commit: float | None
    output_tokens: int
    stopped_by_time_budget: bool
    output_tokens_per_s: float | None
    kinds: dict[str, KindSummary]
    extends: list[str]
    engine: dict[str, Any] = {}  # the vLLM engine's settings (dtype, KV block, sequences at once)
    finished_at: str | None = None  # UTC, ISO 8601: names the run among a folder's runs

    def lines(self) -> list[str]:
        """What a run did, for the console."""
        lines = [
            f"generate {kind}: {s.rows} rows ({s.generated_now} new, {s.skipped_done} already done, {s.not_generated} "
            f"not generated), {s.output_tokens} output tokens, {s.failures} failures, {s.truncated_by_token_cap} cut "
            "by the token cap"
            for kind, s in self.kinds.items()
        ]
        stopped = " - stopped by the time budget; re-run to continue" if self.stopped_by_time_budget else ""
        return [
            *lines,
            f"generate: {self.output_tokens} output tokens in {self.seconds} s "
            f"({self.output_tokens_per_s} tok/s){stopped}",
        ]


class EmbedReport(Summary):
    teacher_outputs: str
    encoder: str
    max_seq_length: int
    items: int
    items_with_description: int
    items_metadata_only: int
    targets: dict[str, int]
    targets_missing: list[str]
    teacher_rows_without_text: dict[str, int]
    teacher_rows_outside_same_users: dict[str, int]
    unguided_accepted: int
    wall_time_s: float
    inputs_digest: str  # the encoder settings and the content of every file read
    reused: bool = False  # True when a run found these embeddings already written for the same inputs


class Distances(Summary):
    mean: float
    median: float


class DistillSummary(Summary):
    target: str
    users_distilled: int
    users_held_out: int
    steps: int
    resumed_from_step: int
    loss_first: float
    loss_last: float
    losses: list[float]
    train_seconds: float
    ray_train_run: str
    config: dict[str, Any]
    encoder: str
    max_seq_length: int
    distances_held_out: dict[str, Distances] | None
    wall_time_s: float
    users: str = "with_reasoning"  # distill.users
    users_with_teacher_text: int | None = None  # of users_distilled: the rest learnt Enc(target metadata) alone
    held_out_losses: list[float] = []  # per epoch, where validation chose the epoch (distill.patience)
    best_epoch: int | None = None  # the epoch kept (1-based), where validation chose it
    # the student whose model this one copied: it learnt the same examples with the same settings
    copied_from: str | None = None

    @property
    def weights_id(self) -> str:
        """Names the student's trained weights: its run and how far it trained (the epoch kept, where
        validation chose it)."""
        return f"{self.ray_train_run}-" + (f"epoch{self.best_epoch}" if self.best_epoch else str(self.steps))


class TrainSummary(Summary):
    """A trained recommender's metrics (``models/<name>/<version>/metrics.json``)."""

    model: str
    version: str
    kind: str
    valid: Metrics
    test: Metrics | None = None  # scored once, on the model validation chose
    best_epoch: int | None = None
    epochs_trained: int | None = None
    resumed_from_epoch: int | None = None
    history: list[dict[str, Any]] = []  # per epoch: its losses and validation metrics (a fusion: per weight tried)
    mask_history: bool
    train_users: int
    eval_users: int
    train_seconds: float | None = None  # its epochs, summed over every attempt (wall_time_s: this attempt's)
    wall_time_s: float
    config: dict[str, Any]  # the stage's section: how it trained, with the model arguments


class AliasMove(Summary):
    """One move of an index alias: ``promote`` (to a version) or ``rollback`` (to the one live before)."""

    action: str
    version: str
    by: str  # user@host
    at: str  # UTC, ISO 8601


class AliasRecord(Summary):
    """An index alias (``index/aliases/<alias>.json``): the version it names, and every move, oldest first."""

    alias: str
    version: str
    moves: list[AliasMove]


class Lease(Summary):
    """Who writes under a storage path's ``index/`` now (``index/lease.json``), until when (UTC seconds)."""

    holder: str
    token: str
    expires_at: float


class IndexSummary(Summary):
    """An index version's manifest (``index/<version>/manifest.json``)."""

    version: str
    items: int
    model: str
    model_version: str
    similarity: str
    settings: dict[str, Any]
    quality: dict[str, Any]
    base_version: str | None
    added_items: int
    # file name -> sha256, recorded as the version is written and checked as it is loaded (a manifest written
    # before it existed has none: refused on load, written again by the next build)
    files: dict[str, str] = {}
