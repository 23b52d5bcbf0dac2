"""Paired comparison of scored runs on the same users: HR@10 / NDCG@10 differences with their
paired standard errors, from the per-user ranks the benchmarks commit (``<result>_ranks.parquet``).

    python -m bench.paired students_beauty:sasrec students_beauty:fusion_dllm2rec \
        students_beauty:fusion_dllm2rec_tail --out best-students

Each argument is ``<result name>:<method>`` (the ranks in bench/results/<result name>_ranks.parquet)
or a projection run's own ``<storage_path>/<run_name>/ranks.parquet``; every run is compared with
the first. Writes bench/results/paired_<out>.json and .md.

Two methods scored on the same users make correlated errors, so the paired standard error of
their difference is smaller than the two binomial errors combined: it is the one that says
whether a difference is noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import results
from r2end_core.eval import metrics

SPLITS = ("valid", "test")


def ranks_path(name: str):
    return results.FOLDER / f"{name}_ranks.parquet"


def split_rows(ranks: pa.Table, split: str) -> pa.Table:
    """A run's rows of ``split`` in the user order every paired comparison uses (by user id)."""
    return ranks.filter(pc.equal(ranks["split"], split)).sort_by("user_id")


def aligned_ranks(runs: dict[str, pa.Table], split: str) -> dict:
    """Each run's ranks on ``split`` in one user order (``split_rows``); runs scored on other users are an
    error."""
    out, first = {}, None
    for label, table in runs.items():
        rows = split_rows(table, split)
        if first is None:
            first = (label, rows["user_id"])
        elif not rows["user_id"].equals(first[1]):
            raise ValueError(
                f"{label} and {first[0]} were not scored on the same {split} users "
                f"({rows.num_rows} and {len(first[1])} users): a paired comparison needs the same ones"
            )
        out[label] = rows["rank"].to_numpy()
    return out


def compare(runs: dict[str, pa.Table]) -> dict:
    """``{label: {split: paired_difference(label, first)}}`` for every run after the first."""
    base, *others = runs
    by_split = {split: aligned_ranks(runs, split) for split in SPLITS}
    return {
        label: {split: metrics.paired_difference(by_split[split][label], by_split[split][base]) for split in SPLITS}
        for label in others
    }


def table(paired: dict, base: str) -> str:
    lines = [
        f"| run | split | users | H@10 − {base} (± paired s.e.) | z | N@10 − {base} (± s.e.) | only it hits "
        f"| only {base} hits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, splits in paired.items():
        for split, d in splits.items():
            hr, ndcg = d["hr@10"], d["ndcg@10"]
            lines.append(
                f"| {label} | {split} | {d['users']:,} | {hr['difference']:+.4f} ± {hr['se']:.4f} | {hr['z']:+.2f} | "
                f"{ndcg['difference']:+.4f} ± {ndcg['se']:.4f} | {d['only_a_hits']} | {d['only_b_hits']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RESULT:METHOD")
    parser.add_argument("--out", required=True, help="writes bench/results/paired_<out>.json and .md")
    args = parser.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("give at least two RESULT:METHOD runs")
    runs = {}
    for run in args.runs:
        if run.endswith(".parquet"):
            if not Path(run).exists():
                raise SystemExit(f"{run} not found: a projection run writes <storage_path>/<run_name>/ranks.parquet")
            runs[run] = pq.read_table(run)
            continue
        name, sep, method = run.rpartition(":")
        if not sep or not ranks_path(name).exists():
            raise SystemExit(f"{run}: expected <result name>:<method> with {ranks_path(name or run)} present")
        ranks = pq.read_table(ranks_path(name))
        runs[run] = ranks.filter(pc.equal(ranks["method"], method))
        if not runs[run].num_rows:
            raise SystemExit(
                f"{run}: no method {method!r} in {ranks_path(name)} (it has {sorted(set(ranks['method'].to_pylist()))})"
            )
    paired = compare(runs)
    results.write(
        f"paired_{args.out}",
        {
            "base": args.runs[0],
            "paired": paired,
            "command": "python -m bench.paired " + " ".join(args.runs) + f" --out {args.out}",
        },
        f"# Paired differences against `{args.runs[0]}`\n\n{table(paired, 'base')}\n\n"
        f"Command: `python -m bench.paired {' '.join(args.runs)} --out {args.out}`\n",
    )


if __name__ == "__main__":
    main()
