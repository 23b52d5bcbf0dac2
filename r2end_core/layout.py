"""Where every artifact lives under the storage path (a local folder or a pyarrow URI). Table schemas:
``r2end_core.schemas``; the JSON summaries: ``r2end_core.summaries``.

    <storage_path>/
      prepared/users/*.parquet          schemas.USERS, one row per user (Ray Data; files of 100,000 users)
      prepared/items.parquet            schemas.ITEMS, one row per catalogue item
      prepared/report.json              summaries.PrepareReport
      generated/<kind folder>/          teacher outputs (schemas.USER_OUTPUTS / ITEM_OUTPUTS), one folder per
                                        kind (teacher.kinds), merged to one row per key at the end of a run
      generated/summary.json            summaries.GenerateSummary of the last generation run
      embeddings/items.parquet          schemas.ITEM_EMBEDDINGS: Enc(M_i + D_i) per item
      embeddings/targets.parquet        schemas.TARGET_EMBEDDINGS: distillation targets per user and kind
      embeddings/unguided_grounding.parquet   schemas.GROUNDING, when computed here
      embeddings/report.json            summaries.EmbedReport (with the inputs digest later stages key on)
      students/<run>/model/             a distilled student (a sentence-transformers folder)
      students/<run>/metrics.json       summaries.DistillSummary
      students/<run>/examples.parquet   schemas.DISTILL_EXAMPLES (held_out.parquet: the users validation holds
                                        out, with distill.patience); distances.parquet: schemas.DISTANCES
      models/<name>/<version>/          a trained recommender (r2end_core.models): manifest.json, its weights,
                                        items.parquet, metrics.json (summaries.TrainSummary), ranks.parquet
      models/<name>/latest.json         {"version": the version trained last}
      teacher_rankings/<model>/<version>/<instances>.parquet   schemas.TEACHER_RANKINGS: a trained model's
                                        top-K for students' training instances (DLLM2Rec)
      index/<version>/                  index.faiss, items.parquet (schemas.INDEX_ITEMS), manifest.json
      index/latest.json                 {"version": the version built last}
      index/aliases/<alias>.json        summaries.AliasRecord: the version an alias ("live") names, every move
      index/lease.json                  summaries.Lease: who writes index versions or moves aliases now
      caches/text_vectors/<encoder>/    schemas.TEXT_VECTORS: a bundled encoder's vectors of each text
                                        it encoded (items, targets, history texts)
      ray_train/<run>/                  Ray Train runs (checkpoints, progress.json)
      logs/<stage>.log                  everything a stage printed; logs/ray/: its Ray workers' logs;
                                        logs/<benchmark>-<model>.attempts.json: a benchmark run's cut attempts
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from r2end_core import storage


@dataclass(frozen=True)
class Layout:
    """The paths of one storage path.

    >>> Layout("/a").model_version("sasrec", "v1", "metrics.json")
    '/a/models/sasrec/v1/metrics.json'
    """

    root: str

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *[p for p in parts if p])

    # prepare
    @property
    def users(self) -> str:
        return self.path("prepared", "users")

    @property
    def items(self) -> str:
        return self.path("prepared", "items.parquet")

    @property
    def prepare_report(self) -> str:
        return self.path("prepared", "report.json")

    # generate
    def generated(self, kind_folder: str) -> str:
        return self.path("generated", kind_folder)

    @property
    def generation_summary(self) -> str:
        return self.path("generated", "summary.json")

    # embed
    def embeddings(self, name: str) -> str:
        """``items.parquet``, ``targets.parquet``, ``unguided_grounding.parquet`` or ``report.json``."""
        return self.path("embeddings", name)

    # distill
    def student(self, run: str, name: str = "") -> str:
        return self.path("students", run, name)

    # trained recommenders
    def model(self, name: str) -> str:
        return self.path("models", name)

    def model_version(self, name: str, version: str, file: str = "") -> str:
        return self.path("models", name, version, file)

    def teacher_rankings(self, model: str, version: str, instances: str) -> str:
        return self.path("teacher_rankings", model, version, f"{instances}.parquet")

    def model_latest(self, name: str) -> str:
        return self.path("models", name, "latest.json")

    # index
    def index(self, version: str, file: str = "") -> str:
        return self.path("index", version, file)

    @property
    def index_latest(self) -> str:
        return self.path("index", "latest.json")

    def index_alias(self, alias: str) -> str:
        return self.path("index", "aliases", f"{alias}.json")

    @property
    def index_lease(self) -> str:
        return self.path("index", "lease.json")

    # caches, runs, logs
    def text_vectors(self, encoder_id: str) -> str:
        return self.path("caches", "text_vectors", encoder_id)

    @property
    def ray_train(self) -> str:
        return self.path("ray_train")

    def logs(self, name: str = "") -> str:
        return self.path("logs", name)

    def prepared_digest(self) -> str:
        """Names the content of the prepared tables (what a model trained on them was trained on)."""
        require(self.items, "prepare")
        return storage.digest([storage.sha256(f) for f in [*storage.list_files(self.users), self.items]])

    # the prepared tables, which every later stage reads
    def read_users(self) -> pa.Table:
        """Users sorted by user_id, so every reader sees the same order whatever Ray wrote."""
        require(self.users, "prepare")
        return storage.read_table(self.users).sort_by("user_id")

    def iter_users(self, columns: list[str], rows: int) -> Iterator[pa.Table]:
        """The users (only ``columns``) in blocks of at most ``rows``, in the files' order: for a pass over
        every user that holds one block at a time."""
        require(self.users, "prepare")
        return storage.iter_tables(self.users, columns, rows)

    def read_items(self) -> pa.Table:
        require(self.items, "prepare")
        return storage.read_table(self.items).sort_by("item_index")


def require(path: str, stage: str) -> bool:
    """True if ``path`` exists, else an error saying which stage writes it."""
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{path} not found: run the {stage} stage (ray_jobs.{stage}) on this storage path first"
        )
    return True
