"""Stage 0, prepare: validate a dataset and write the users and items tables (Ray Data writes the users).

ray job submit --working-dir . -- python -m ray_jobs.prepare --config configs/beauty-sample.yaml
"""

from __future__ import annotations

import ray

from r2end_core import storage
from r2end_core.config import PipelineConfig
from r2end_core.data import contract, histories, items
from r2end_core.layout import Layout
from r2end_core.summaries import PrepareReport
from ray_jobs.runtime import log, run_stage


def run(cfg: PipelineConfig) -> PrepareReport:
    layout, pc = Layout(cfg.storage_path), cfg.prepare
    prepared = contract.load_and_validate(pc.dataset_path, pc)
    texts = items.metadata_texts(prepared.items)
    item_table = items.build_item_table(
        prepared.sequences["sequence"], prepared.items, texts, pc.buyer_context_max_items
    )
    storage.write_table(item_table, layout.items)
    # Verbalising histories is the per-user work that grows with the data: Ray Data spreads it.
    users = ray.data.from_arrow(contract.sequences_table(prepared)).map_batches(
        histories.build_user_rows, batch_format="pyarrow", fn_kwargs={"metadata_text": texts, "rule": pc.history}
    )
    users.write_parquet(layout.users, mode="overwrite")
    prepared.report.write(layout.prepare_report)
    r = prepared.report
    log.info(
        f"prepare: {r.users:,} users, {r.items:,} items, {r.interactions:,} interactions "
        f"({r.dropped_short_users} short users dropped; metadata: {', '.join(r.metadata_fields)})"
    )
    return prepared.report


if __name__ == "__main__":
    run_stage(__doc__, run, "prepare")
