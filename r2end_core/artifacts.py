"""Where each stage's artifacts live under the storage path, and how to read them back.

    <storage_path>/
      prepared/users/*.parquet     data.USERS_SCHEMA, one row per user (written by Ray Data)
      prepared/items.parquet       data.ITEMS_SCHEMA, one row per catalogue item
      prepared/report.json         counts, dropped users, which metadata fields the dataset has
      sasrec/model.pt              best SASRec weights (by validation NDCG@10) and its config
      sasrec/metrics.json          validation and test metrics of that model
                                   (another folder name with sasrec.run_name)
      generated/oracle/, unguided/, items/
                                   teacher outputs (generation.USER_OUTPUT_SCHEMA / ITEM_OUTPUT_SCHEMA),
                                   one row per key once merged; read them with read_generated
      generated/summary.json       counts, tokens and speed of the last generation run
      embeddings/items.parquet     embeddings.ITEM_EMBEDDING_SCHEMA: Enc(M_i + D_i) per item
      embeddings/targets.parquet   embeddings.TARGET_EMBEDDING_SCHEMA: distillation targets per user and kind
      embeddings/unguided_grounding.parquet
                                   grounding.GROUNDING_SCHEMA (rejection sampling), when computed here
      embeddings/user_embeddings/  USER_EMBEDDING_SCHEMA: Enc, undistilled, on history texts (a cache)
      embeddings/report.json       counts (items with descriptions, targets per kind, skipped outputs)
      student/model/               the distilled student, a sentence-transformers folder
      student/metrics.json         distillation summary: steps, loss, distances before and after
      student/distances.parquet    per held-out user: L2 and cosine to the target, before and after
      student/user_embeddings/<id>/ embeddings.USER_EMBEDDING_SCHEMA: the student on history texts (a cache
                                   per trained weights)
                                   (another folder name with distill.run_name)
      r2end/projection.pt          the trained projection f (or none: ablation 5) and its config
      r2end/metrics.json           validation and test metrics (another folder with project.run_name)
      r2end/ranks.parquet          RANKS_SCHEMA: each scored user's rank of its validation and test
                                   target, for paired comparisons of runs on the same users
      index/<version>/             index.faiss, items.parquet (index.INDEX_ITEMS_SCHEMA), manifest.json:
                                   one servable version of the item index (layout in r2end_core/index.py)
      index/latest.json            the version built last
      ray_train/                   Ray Train run folders (checkpoints)
"""

from __future__ import annotations

import pyarrow as pa

from r2end_core import storage

#: One row per (scored user, split): the 0-based rank of the user's target in the full ranking.
RANKS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)


def users_path(root: str) -> str:
    return storage.join(root, "prepared", "users")


def items_path(root: str) -> str:
    return storage.join(root, "prepared", "items.parquet")


def prepare_report_path(root: str) -> str:
    return storage.join(root, "prepared", "report.json")


def sasrec_model_path(root: str, run_name: str = "sasrec") -> str:
    return storage.join(root, run_name, "model.pt")


def sasrec_metrics_path(root: str, run_name: str = "sasrec") -> str:
    return storage.join(root, run_name, "metrics.json")


def generated_path(root: str, kind: str) -> str:
    return storage.join(root, "generated", "items" if kind == "item" else kind)


def generation_summary_path(root: str) -> str:
    return storage.join(root, "generated", "summary.json")


def read_generated(root: str, kind: str) -> pa.Table | None:
    """Teacher outputs of one kind, one row per key (None if none were generated)."""
    from r2end_core.generation import latest_per_key, output_schema

    files = storage.list_files(generated_path(root, kind))
    if not files:
        return None
    return latest_per_key(pa.concat_tables([storage.read_table(f).cast(output_schema(kind)) for f in files]))


def embeddings_path(root: str, name: str) -> str:
    """``name``: items.parquet, targets.parquet, unguided_grounding.parquet or report.json."""
    return storage.join(root, "embeddings", name)


def read_embeddings(root: str, name: str) -> pa.Table:
    """An embed-stage table (``items.parquet`` or ``targets.parquet``), or an error saying what to run."""
    path = embeddings_path(root, name)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: run the embed stage (ray_jobs.embed) on this storage path first")
    return storage.read_table(path)


def encoder_user_embeddings_path(root: str) -> str:
    return storage.join(root, "embeddings", "user_embeddings")


def grounding_path(root: str) -> str:
    return embeddings_path(root, "unguided_grounding.parquet")


def run_path(root: str, run_name: str, name: str = "") -> str:
    """A file or folder of a distill or project run (``student/model``, ``r2end/metrics.json``)."""
    return storage.join(root, run_name, name) if name else storage.join(root, run_name)


def ray_train_path(root: str) -> str:
    return storage.join(root, "ray_train")


def read_users(root: str) -> pa.Table:
    """Users sorted by user_id, so every reader sees the same order whatever Ray wrote."""
    return storage.read_table(users_path(root)).sort_by("user_id")


def read_items(root: str) -> pa.Table:
    return storage.read_table(items_path(root)).sort_by("item_index")
