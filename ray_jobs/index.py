"""Index stage: a model's item vectors in a faiss index, saved as a version serving loads.

    ray job submit --working-dir . -- python -m ray_jobs.index --config configs/beauty-sample.yaml
    # approximate search, its recall against exact measured on validation users' histories:
    python -m ray_jobs.index --config configs/beauty-sample.yaml --set index.kind=hnsw
    # another trained model (any kind), e.g. SASRec:
    python -m ray_jobs.index --config configs/beauty-sample.yaml --set index.model=sasrec
    # new items without retraining (text models): a new version = the latest one + these items
    python -m ray_jobs.index --config configs/beauty-sample.yaml --set index.new_items=/path/new_items.parquet

The version is named from its inputs (model version, settings, items); ``index/latest.json`` points to
the one built last (layout in ``r2end_core.serve.index``). What is served does not change: ``ray_jobs.promote``
moves it. Needs no Ray: it runs in this process.
"""

from __future__ import annotations

from r2end_core import models
from r2end_core.config import PipelineConfig
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split
from r2end_core.layout import Layout
from r2end_core.models.r2end.projection import user_samples
from r2end_core.serve import aliases, index
from r2end_core.summaries import IndexSummary
from ray_jobs.runtime import log, run_stage


def run(cfg: PipelineConfig) -> IndexSummary:
    with aliases.lease(Layout(cfg.storage_path)):  # one writer of index versions at a time
        return build(cfg)


def build(cfg: PipelineConfig) -> IndexSummary:
    layout, ic = Layout(cfg.storage_path), cfg.index
    if ic.new_items:
        base = index.load_manifest(layout, ic.base_version or "latest")
        built = index.add_items(layout, models.load(layout, base.model, base.model_version), base.version, ic.new_items)
    else:
        model, users = models.load(layout, ic.model or cfg.project.run_name), layout.read_users()
        _, sample = user_samples(users.num_rows, None, ic.recall_queries, cfg.project.sample_seed)
        built = index.build_version(
            layout, model, layout.read_items(), ic, Histories.of_split(users.take(sample), Split.VALID)
        )
    log.info(
        f"index version {built.version}: {built.items:,} items of model {built.model} ({built.model_version}), "
        f"{built.settings['kind']}, quality {built.quality}"
    )
    return built


if __name__ == "__main__":
    run_stage(__doc__, run, "index")
