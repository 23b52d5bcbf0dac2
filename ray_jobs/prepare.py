"""Stage 0, prepare: validate a dataset and write the users and items tables, on Ray Data (``data.prepare``:
the interactions are read, checked and grouped by user in parts; no process holds them all).

ray job submit --working-dir . -- python -m ray_jobs.prepare --config configs/beauty-sample.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import ray

from r2end_core import storage
from r2end_core.config import PipelineConfig
from r2end_core.data import prepare
from r2end_core.layout import Layout
from r2end_core.summaries import PrepareReport
from ray_jobs.runtime import log, run_stage

USERS_PER_FILE = 100_000


@dataclass
class OnRayData:
    """``prepare.Frames`` on a Ray Data dataset; a grouping hash-partitions it into ``partitions`` blocks."""

    dataset: ray.data.Dataset
    partitions: int

    def _with(self, dataset: ray.data.Dataset) -> OnRayData:
        return OnRayData(dataset, self.partitions)

    def map(self, fn, **kwargs) -> OnRayData:
        return self._with(self.dataset.map_batches(fn, batch_size=None, batch_format="pyarrow", fn_kwargs=kwargs))

    def group(self, key, fn, **kwargs) -> OnRayData:
        # every row of a key lands in one block (as GroupedData.map_groups does it), whole blocks reach ``fn``
        blocks = self.dataset.repartition(self.partitions, keys=[key])
        return self._with(blocks.map_batches(fn, batch_size=None, batch_format="pyarrow", fn_kwargs=kwargs))

    def sort(self, column) -> OnRayData:
        return self._with(self.dataset.sort(column))

    def materialize(self) -> OnRayData:
        return self._with(self.dataset.materialize())

    def tables(self):
        yield from self.dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def on_ray_data(slices: pa.Table, groups: int) -> OnRayData:
    """``prepare.Engine`` on Ray Data: one block (and read task) per slice of the file, users grouped into
    ``groups`` blocks."""
    return OnRayData(ray.data.from_arrow(prepare.Parts.of(slices).parts), groups)


def run(cfg: PipelineConfig) -> PrepareReport:
    layout = Layout(cfg.storage_path)
    context = ray.data.DataContext.get_current()
    before = context.execution_options.preserve_order, context.target_max_block_size
    context.execution_options.preserve_order = True  # a sample is drawn by position in the users' order
    context.target_max_block_size = None  # blocks are the slices, groups and files below: none split by bytes
    try:
        prepared = prepare.prepare(cfg.prepare, on_ray_data)
        storage.write_table(prepared.items, layout.items)
        # files of USERS_PER_FILE users in the dataset's order, each one row group, whatever blocks the sort
        # made: the same data writes the same files, so the prepared digest (in training runs' names) holds
        files = prepared.users.dataset.repartition(target_num_rows_per_block=USERS_PER_FILE, strict=True)
        files.map_batches(pa.Table.combine_chunks, batch_size=None, batch_format="pyarrow").write_parquet(
            layout.users, mode="overwrite"
        )
    finally:
        context.execution_options.preserve_order, context.target_max_block_size = before
    prepared.report.write(layout.prepare_report)
    r = prepared.report
    log.info(
        f"prepare: {r.users:,} users, {r.items:,} items, {r.interactions:,} interactions "
        f"({r.dropped_short_users} short users dropped; metadata: {', '.join(r.metadata_fields)})"
    )
    return prepared.report


if __name__ == "__main__":
    run_stage(__doc__, run, "prepare")
