"""SASRec on all of Beauty through the real stages (prepare on Ray Data, train on Ray Train).

    python -m bench.sasrec_beauty [--config configs/beauty-full.yaml] [--set sasrec.seed=7]

Writes bench/results/sasrec_beauty.json and bench/results/sasrec_beauty.md.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from r2end_core import metrics
from ray_jobs import prepare, train_sasrec
from ray_jobs.runtime import connect, parse_config

RESULTS = Path(__file__).parent / "results"
# Full-ranking SASRec on this dataset as published (TIGER, NeurIPS 2023; sampled-negative training).
PUBLISHED = {"TIGER's SASRec (BCE, sampled negatives)": {"hr@5": 0.0387, "ndcg@5": 0.0249, "hr@10": 0.0605, "ndcg@10": 0.0318}}


def main() -> None:
    if "--config" not in sys.argv:
        sys.argv += ["--config", "configs/beauty-full.yaml"]
    cfg = parse_config(__doc__)
    connect(cfg.ray)
    started = time.time()
    report = prepare.run(cfg)
    summary = train_sasrec.run(cfg)
    result = {
        **summary,
        "dataset": report,
        "command": "python -m " + " ".join(["bench.sasrec_beauty", *sys.argv[1:]]),
        "total_wall_time_s": round(time.time() - started, 1),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sasrec_beauty.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    ks = (5, 10, 20)
    lines = [
        "# SASRec on Amazon Beauty (5-core), full-item ranking, leave-one-out",
        "",
        f"{report['users']:,} users, {report['items']:,} items; history masked: {summary['mask_history']}; "
        f"seed {summary['seed']}; best epoch {summary['best_epoch']} of {summary['epochs_trained']} "
        f"(selected on validation NDCG@10); wall time {summary['wall_time_s'] / 60:.1f} min.",
        "",
        metrics.format_table({"sasrec (ours, full-softmax CE)": summary}, ks),
        "",
        "| published | HR@5 | NDCG@5 | HR@10 | NDCG@10 |",
        "|---|---|---|---|---|",
        *[f"| {name} | {m['hr@5']} | {m['ndcg@5']} | {m['hr@10']} | {m['ndcg@10']} |" for name, m in PUBLISHED.items()],
        "",
        f"Test long-tail (least popular 80% of items, {summary['test']['tail_users']} users): "
        f"HR@10 {summary['test']['tail_hr@10']:.4f}, NDCG@10 {summary['test']['tail_ndcg@10']:.4f}; "
        f"test coverage@10 {summary['test']['coverage@10']:.3f}.",
        "",
        f"Command: `{result['command']}`",
    ]
    (RESULTS / "sasrec_beauty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
