"""Shared fixtures: a small slice of the real Beauty data, and a local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BEAUTY = Path(os.environ.get("R2END_BEAUTY", Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"))


@pytest.fixture(scope="session")
def beauty_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first 300 users of real Beauty (all their interactions) and the items they touch."""
    if not BEAUTY.exists():
        pytest.fail(f"Beauty data not found at {BEAUTY} (set R2END_BEAUTY)")
    inter = pq.read_table(BEAUTY / "interactions.parquet").to_pandas()
    users = inter["user_id"].drop_duplicates().head(300)
    inter = inter[inter["user_id"].isin(users)].reset_index(drop=True)
    items = pq.read_table(BEAUTY / "items.parquet").to_pandas()
    items = items[items["item_id"].isin(inter["item_id"])].reset_index(drop=True)
    return inter, items


def write_dataset(folder: Path, interactions: pd.DataFrame | pa.Table, items: pd.DataFrame | pa.Table) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("interactions", interactions), ("items", items)):
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, folder / f"{name}.parquet")
    return str(folder)


@pytest.fixture
def beauty_dir(tmp_path, beauty_frames) -> str:
    inter, items = beauty_frames
    return write_dataset(tmp_path / "beauty", inter, items)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the stage tests (4 logical CPUs on 2 cores, as the configs use)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def prepared_tables(beauty_dir):
    """(users, items) as the prepare stage builds them (USERS_SCHEMA, ITEMS_SCHEMA), without Ray."""
    from r2end_core import data
    from r2end_core.config import PrepareConfig

    prepared = data.load_and_validate(beauty_dir, PrepareConfig(dataset_path=beauty_dir))
    texts = data.metadata_texts(prepared)
    return data.build_user_rows(data.sequences_table(prepared), texts, 8, 60), data.build_item_table(prepared, texts, 10)
