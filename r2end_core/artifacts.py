"""Where each stage's artifacts live under the storage path, and how to read them back.

    <storage_path>/
      prepared/users/*.parquet     data.USERS_SCHEMA, one row per user (written by Ray Data)
      prepared/items.parquet       data.ITEMS_SCHEMA, one row per catalogue item
      prepared/report.json         counts, dropped users, which metadata fields the dataset has
      sasrec/model.pt              best SASRec weights (by validation NDCG@10) and its config
      sasrec/metrics.json          validation and test metrics of that model
      ray_train/                   Ray Train run folders (checkpoints)
"""

from __future__ import annotations

import pyarrow as pa

from r2end_core import storage


def users_path(root: str) -> str:
    return storage.join(root, "prepared", "users")


def items_path(root: str) -> str:
    return storage.join(root, "prepared", "items.parquet")


def prepare_report_path(root: str) -> str:
    return storage.join(root, "prepared", "report.json")


def sasrec_model_path(root: str) -> str:
    return storage.join(root, "sasrec", "model.pt")


def sasrec_metrics_path(root: str) -> str:
    return storage.join(root, "sasrec", "metrics.json")


def ray_train_path(root: str) -> str:
    return storage.join(root, "ray_train")


def read_users(root: str) -> pa.Table:
    """Users sorted by user_id, so every reader sees the same order whatever Ray wrote."""
    return storage.read_table(users_path(root)).sort_by("user_id")


def read_items(root: str) -> pa.Table:
    return storage.read_table(items_path(root)).sort_by("item_index")
