"""How long full-item ranking takes at Beauty scale (every user x every item).

    python -m bench.eval_speed [--storage artifacts/beauty-full] [--model sasrec-seed22] [--chunk-size 1024]

Scores the validation split with a trained SASRec-family model from the storage path (by default the
run that `bench.sasrec_beauty` chose); the time is the ranking's, given the user vectors, so any such
model measures the same. Writes bench/results/eval_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench import results
from r2end_core import models
from r2end_core.data.splits import Split
from r2end_core.eval import metrics
from r2end_core.eval.evaluate import EvalSet
from r2end_core.layout import Layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", default="artifacts/beauty-full")
    parser.add_argument("--model", default=None, help="a trained model's name (default: sasrec_beauty's chosen run)")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layout = Layout(args.storage)
    name = args.model or json.loads((results.FOLDER / "sasrec_beauty.json").read_text())["chosen"]
    model = models.load(layout, name)
    scored = EvalSet.build(layout.read_users(), layout.read_items(), Split.VALID)
    users, item_vectors = torch.from_numpy(model.user_vectors(scored.histories)), torch.from_numpy(model.item_vectors())
    targets, items = scored.targets, scored.item_ids

    def score(rows):
        return users[torch.as_tensor(rows)] @ item_vectors.T

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        ranking = metrics.rank_users(score, targets, len(items), scored.exclude, chunk_size=args.chunk_size)
        result = metrics.ranking_metrics(ranking, targets, len(items), scored.tail)
        timings.append(time.perf_counter() - started)
    out = {
        "model": name,
        "users": len(targets),
        "items": len(items),
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "seconds_median_of_3": round(float(np.median(timings)), 2),
        "seconds_all": [round(t, 2) for t in timings],
        "scores_per_second": round(len(targets) * len(items) / float(np.median(timings))),
        "valid_ndcg@10": result["ndcg@10"],
    }
    table = (
        "# Full-item ranking evaluation speed\n\n| users | items | chunk | threads | seconds (median of 3) |\n"
        "|---|---|---|---|---|\n"
        f"| {out['users']:,} | {out['items']:,} | {args.chunk_size} | {args.threads} "
        f"| {out['seconds_median_of_3']} |\n\n"
        "HR/NDCG@5/10/20, long-tail and coverage, history masked, "
        "given precomputed user vectors (SASRec, validation split). Absolute times on this shared 2-core "
        f"machine are indicative. Model: `{name}`.\n"
    )
    results.write("eval_speed", out, table, vars(args))


if __name__ == "__main__":
    main()
