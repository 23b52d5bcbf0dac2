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
from collections.abc import Iterable

import numpy as np
import ray

from r2end_core import models
from r2end_core.config import PipelineConfig
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, record, stored_sets
from r2end_core.layout import Layout
from r2end_core.models import fusion
from r2end_core.summaries import PrepareReport, TrainSummary
from ray_jobs import ranking, ray_data
from ray_jobs.runtime import log, run_stage


def weight_search_on_ray(
    blocks: Iterable[tuple[list[np.ndarray], EvalSet]], item_vectors: list[np.ndarray], candidates: list, cpus: int
) -> np.ndarray:
    """``fusion.weight_search``'s sums over ``blocks`` of users (each part's user vectors of the block, the
    block's EvalSet), each block's candidates shared among Ray tasks of ``cpus`` CPUs."""
    tasks = max(1, min(len(candidates), int(ray.cluster_resources().get("CPU", cpus)) // cpus))
    search = ray.remote(num_cpus=cpus)(ranking.in_task)
    shares = [[candidates[i] for i in share] for share in np.array_split(np.arange(len(candidates)), tasks)]
    items = ray.put(item_vectors)
    sums = np.zeros((len(candidates), len(fusion.SEARCH_SUMS)))
    for user_vectors, scored in blocks:
        users, scored = ray.put(user_vectors), ray.put(scored)
        pending = [search.remote(fusion.weight_search, cpus, users, items, scored, share) for share in shares]
        sums += np.concatenate(ray.get(pending))
    return sums


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    layout, fc, started = Layout(cfg.storage_path), cfg.fusion, time.time()
    items, n_users = layout.read_items(), PrepareReport.read(layout.prepare_report, "prepare").users
    parts = [ray_data.with_bulk_encoding(models.load(layout, p), layout, cfg.embed, cfg.resources) for p in fc.parts]
    candidates = fusion.weight_grid(len(parts), fc.weight_grid)
    blocks = (  # a block of the validation users at a time, each embedded once
        ([p.user_vectors(valid.histories) for p in parts], valid)
        for valid in stored_sets(layout, items, [Split.VALID], cfg.sasrec.mask_history)
    )
    sums = weight_search_on_ray(blocks, [p.item_vectors() for p in parts], candidates, cfg.resources.cpus_per_worker)
    if not sums[0, 0]:
        raise ValueError(f"fusion: no validation users to choose the weights on in {layout.users}")
    searched = fusion.searched(candidates, sums)
    weights = fusion.best_weights(searched, fc.min_long_tail_ratio)
    if missed := fusion.floor_missed(searched, weights, fc.min_long_tail_ratio):
        log.warning(f"fusion: {missed}")
    log.info(f"fusion: {len(searched)} weight combinations; validation chose {weights}")
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
