"""Our student on Ray: trained models' scores summed, the weights chosen on validation.

    ray job submit --working-dir . -- python -m ray_jobs.train_fusion --config configs/beauty-sample.yaml

Loads the trained parts (``fusion.parts``, each trained by its own Ray Train job; a text model's history
texts are encoded on Ray Data through the shared cache), reads the validation users a block at a time
(``evaluate.stored_sets``: the driver never holds them all), embeds each block once and scores every weight
combination of ``fusion.weight_grid`` on it in Ray tasks, a share of the grid each, adding up the blocks'
metric sums (the best validation NDCG@10 wins, above ``fusion.min_long_tail_ratio`` times the first part's
long-tail HR@10 if set). Writes
``models/<fusion.run_name>/<version>/`` with the weights validation chose (its ``metrics.json`` lists every
combination tried), and scores the test split once. The logic: ``r2end_core.models.fusion``.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from r2end_core import models
from r2end_core.config import PipelineConfig
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import record, stored_sets
from r2end_core.layout import Layout
from r2end_core.models import fusion
from r2end_core.summaries import PrepareReport, TrainSummary
from ray_jobs import ranking, ray_data
from ray_jobs.runtime import log, run_stage


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    layout, fc, started = Layout(cfg.storage_path), cfg.fusion, time.time()
    items, n_users = layout.read_items(), PrepareReport.read(layout.prepare_report, "prepare").users
    parts = [ray_data.with_bulk_encoding(models.load(layout, p), layout, cfg.embed, cfg.resources) for p in fc.parts]
    candidates = fusion.weight_grid(len(parts), fc.weight_grid)
    cpus = cfg.resources.cpus_per_worker
    tasks = max(1, min(len(candidates), int(ray.cluster_resources().get("CPU", cpus)) // cpus))
    search = ray.remote(num_cpus=cpus)(fusion.weight_search)
    shares = [[candidates[i] for i in share] for share in np.array_split(np.arange(len(candidates)), tasks)]
    item_vectors = ray.put([p.item_vectors() for p in parts])
    sums = np.zeros((len(candidates), len(fusion.SEARCH_SUMS)))
    for valid in stored_sets(layout, items, [Split.VALID], cfg.sasrec.mask_history):  # a block of users at a time
        user_vectors, scored = ray.put([p.user_vectors(valid.histories) for p in parts]), ray.put(valid)
        sums += np.concatenate(ray.get([search.remote(user_vectors, item_vectors, scored, s) for s in shares]))
    searched = fusion.searched(candidates, sums)
    weights = fusion.best_weights(searched, fc.min_long_tail_ratio)
    if missed := fusion.floor_missed(searched, weights, fc.min_long_tail_ratio):
        log.warning(f"fusion: {missed}")
    log.info(f"fusion: {len(searched)} weight combinations in {tasks} Ray tasks; validation chose {weights}")
    model = fusion.FusionRecommender(parts, weights, fusion.manifest(fc.run_name, parts, weights))
    model.manifest = models.save(layout, model.manifest, model.write_files)
    splits = [Split.VALID, Split.TEST] if score_test else [Split.VALID]
    return record(
        layout,
        model,
        stored_sets(layout, items, splits, cfg.sasrec.mask_history),
        ranking.on_ray(cfg.resources),
        history=searched,
        train_users=n_users,
        eval_users=n_users,
        wall_time_s=round(time.time() - started, 1),
        config=fc.model_dump(mode="json"),
    )


if __name__ == "__main__":
    run_stage(__doc__, run, "train_fusion")
