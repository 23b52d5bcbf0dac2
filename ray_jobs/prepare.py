"""Stage 0: validate a dataset and write the users and items tables.

    ray job submit --working-dir . -- python -m ray_jobs.prepare --config configs/beauty-sample.yaml
"""

from __future__ import annotations

import ray

from r2end_core import artifacts, data, storage
from r2end_core.config import PipelineConfig
from ray_jobs.runtime import run_stage


def run(cfg: PipelineConfig) -> dict:
    prepared = data.load_and_validate(cfg.prepare.dataset_path, cfg.prepare)
    texts = data.metadata_texts(prepared)
    root = cfg.storage_path
    storage.write_table(data.build_item_table(prepared, texts, cfg.prepare.buyer_context_max_items), artifacts.items_path(root))
    # Verbalising histories is the per-user work that grows with the data: Ray Data spreads it.
    users = ray.data.from_arrow(data.sequences_table(prepared)).map_batches(
        data.build_user_rows,
        batch_format="pyarrow",
        fn_kwargs={
            "metadata_text": texts,
            "max_items": cfg.prepare.history_max_items,
            "window_days": cfg.prepare.history_window_days,
        },
    )
    users.write_parquet(artifacts.users_path(root), mode="overwrite")
    storage.write_json(prepared.report, artifacts.prepare_report_path(root))
    print(f"prepare: {prepared.report}")
    return prepared.report


if __name__ == "__main__":
    run_stage(__doc__, run)
