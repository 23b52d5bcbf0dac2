"""GPU hours for all of Beauty and for a million users, from FLOPs measured on this machine and GPU figures
that others published (cited below).

    python -m bench.cluster_plan --storage /work/artifacts/beauty-full

Measured here, with ``torch.utils.flop_counter`` on real batches of the prepared data: FLOPs per predicted
position of a SASRec training step (full and sampled softmax), per user of a distillation step (the student
encoder forward and backward on history texts), per text of the encoder's forward pass (item metadata and the
teacher's reasoning), per user of a projection step. Per generated answer: the prompt and output tokens that
``bench.generation_cpu`` measured, at 2 x parameters FLOPs per computed token. The epochs are those the
committed Beauty runs trained (``bench/results``).

A million users: Beauty's per-user interactions, a catalogue of a million items (the index point of
``bench.scale``). The full softmax's cost per position grows with the catalogue (6 x hidden x items: the logits
and their two gradients); the sampled softmax's does not.

GPU time is FLOPs at ``UTILISATION`` of the card's dense bf16 peak, a lower bound for these small models
(launches, not arithmetic, bound them on a GPU); generation adds decoding at a published vLLM throughput for
an 8B teacher. Writes bench/results/cluster_plan.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig

from bench import results
from bench.teacher_outputs import parameters
from r2end_core.config import SoftmaxKind, load_config
from r2end_core.data.splits import index_sequences, training_part
from r2end_core.layout import Layout
from r2end_core.models import sasrec
from r2end_core.models.r2end import distill, projection
from r2end_core.teacher.model import resolve_teacher

UTILISATION = 0.4  # of dense bf16 peak: the same assumption as bench.teacher_outputs' prefill
GPUS = {
    "L4": {
        "bf16_tflops": 121,  # 242 "shown with sparsity", half without
        "memory_gb_s": 300,
        "usd_per_hour": 0.9776,  # g6.2xlarge (1 L4), on demand, us-east-1
        "sources": [
            "https://www.nvidia.com/en-us/data-center/l4/ (BFLOAT16 242 teraFLOPS with sparsity; 300GB/s)",
            "https://github.com/skypilot-org/skypilot-catalog catalogs/v7/aws/vms.csv (g6.2xlarge 0.9776)",
        ],
    },
    "H100 SXM": {
        "bf16_tflops": 989,
        "memory_gb_s": 3350,
        "usd_per_hour": 98.32 / 8,  # p5.48xlarge (8 H100) on demand, before AWS's June 2025 cut of up to 45%
        "sources": [
            "https://www.nvidia.com/en-us/data-center/h100/ (989 TFLOPS bf16 dense, as torchtitan's utils quote it)",
            "https://github.com/skypilot-org/skypilot-catalog catalogs/v7/aws/vms.csv (p5.48xlarge 98.32)",
        ],
    },
}
# vLLM's decoding throughput for an 8B model on one H100 SXM: Llama-3.1-8B-FP8, ShareGPT prompts, vLLM 0.5.4
# (Lambda's benchmark: 3400.4 output tokens/s). No published figure for L4: scaled by memory bandwidth.
DECODE_8B_H100 = 3400.4
DECODE_SOURCE = "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md"
TEACHER_8B = 8.03e9  # Llama-3.1-8B's parameters
MILLION = 1_000_000


def counted(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def sasrec_flops(users, items, cfg, batches: int) -> dict:
    """FLOPs per predicted position of a training step (forward and backward), full and sampled softmax."""
    tokens = [training_part(s) + 1 for s in index_sequences(users, items)]
    popularity = items.column("train_popularity").to_numpy()
    out = {}
    for kind in (SoftmaxKind.FULL, SoftmaxKind.SAMPLED):
        torch.manual_seed(0)
        model = sasrec.SASRec(items.num_rows, cfg.model)
        softmax = sasrec.choose_softmax(cfg.model_copy(update={"softmax": kind}), popularity)
        flops = positions = 0
        for batch in itertools.islice(
            sasrec.training_batches(tokens, cfg.batch_size, cfg.model.max_len, np.random.default_rng(0)), batches
        ):
            real = batch.targets > 0

            def step():
                hidden = model(batch.inputs)  # noqa: B023 (called at once)
                softmax(model, hidden[real], batch.targets[real] - 1).cross_entropy.backward()  # noqa: B023

            flops += counted(step)
            positions += int(real.sum())
        out[str(kind)] = flops / positions
    return out


def encoder_flops(model, texts: list[str], batch_size: int, train: bool) -> float:
    """FLOPs per text of the encoder: forward only, or (``train``) forward and backward of a distillation step."""
    total = 0
    for start in range(0, len(texts), batch_size):
        features = model.tokenize(texts[start : start + batch_size])

        def step():
            out = model(features)["sentence_embedding"]  # noqa: B023
            if train:
                distill.distillation_loss(out, torch.zeros_like(out)).backward()

        if train:
            total += counted(step)
        else:
            with torch.no_grad():
                total += counted(step)
    return total / len(texts)


def projection_flops(cfg, dim: int = 384) -> float:
    """FLOPs per user of a projection step (InfoNCE over ``cfg.negatives`` sampled items)."""
    f = projection.Projection(dim, cfg.model.dim)
    users, items = torch.randn(cfg.batch_size, dim), torch.randn(10_000, dim)
    positives = torch.randint(0, 10_000, (cfg.batch_size,))
    negatives = projection.sample_negatives(positives, 10_000, cfg.negatives, torch.Generator().manual_seed(0))
    loss = lambda: projection.projection_loss(f, users, items, positives, negatives)[0].backward()  # noqa: E731
    return counted(loss) / cfg.batch_size


def stage_flops(work: dict, per: dict, epochs: dict, hidden: int, eval_every: int) -> dict[str, float]:
    """Each stage's FLOPs for a workload (users, items, positions per SASRec epoch)."""
    users, items, positions = work["users"], work["items"], work["positions"]
    extra_items = items - per["catalogue"]  # the full softmax's logits and their two gradients grow with it
    scoring = 2 * hidden * users * items  # one full ranking pass: every user's scores
    return {
        "generate (oracle + item descriptions)": users * per["generate"]["oracle"] + items * per["generate"]["item"],
        "embed (targets, items' metadata and descriptions)": (users + items) * per["encode_reasoning"]
        + items * per["encode_metadata"],
        "distill": users * per["distill_user"] * epochs["distill"],
        "project (histories encoded once)": users * (per["project_user"] * epochs["project"] + per["encode_history"]),
        "sasrec, full softmax": positions * (per["sasrec"]["full"] + 6 * hidden * extra_items) * epochs["sasrec"]
        + scoring * (epochs["sasrec"] // eval_every + 1),
        "sasrec, sampled softmax": positions * per["sasrec"]["sampled"] * epochs["sasrec"]
        + scoring * (epochs["sasrec"] // eval_every + 1),
        "evaluation (valid + test)": 2 * scoring,
    }


def gpu_hours(flops: float, gpu: dict) -> float:
    return flops / (UTILISATION * gpu["bf16_tflops"] * 1e12) / 3600


def generation_8b(work: dict, tokens: dict, gpu: dict) -> float:
    """Hours of one GPU for an 8B teacher: prefill FLOP-bound, decoding at vLLM's published rate (bandwidth-scaled
    off the H100)."""
    prompts = {"oracle": work["users"], "item": work["items"]}
    prefill = sum(n * tokens[k]["computed_prompt_tokens"] for k, n in prompts.items()) * 2 * TEACHER_8B
    output = sum(n * tokens[k]["output_tokens"] for k, n in prompts.items())
    decode_rate = DECODE_8B_H100 * gpu["memory_gb_s"] / GPUS["H100 SXM"]["memory_gb_s"]
    return gpu_hours(prefill, gpu) + output / decode_rate / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="a storage path with all of Beauty prepared")
    parser.add_argument("--config", default="configs/bench/students-beauty.yaml")
    parser.add_argument("--teacher-outputs", default="teacher_outputs/beauty-cpu-full")
    parser.add_argument("--batches", type=int, default=4, help="batches each FLOP count averages over")
    parser.add_argument("--out", help="results folder (default: bench/results)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, [f"storage_path={args.storage}"])
    layout = Layout(cfg.storage_path)
    users, items = layout.read_users(), layout.read_items()
    generation = json.loads((results.FOLDER / "generation_cpu.json").read_text())
    tokens = generation["engines"]["bfloat16"]["per_answer"]
    teacher = parameters(AutoConfig.from_pretrained(resolve_teacher(generation["model"])))
    computed = {k: t["computed_prompt_tokens"] + t["output_tokens"] for k, t in tokens.items()}
    reasoning = pq.read_table(f"{args.teacher_outputs}/oracle.parquet", columns=["text"]).column("text")
    reasoning = [t for t in reasoning.to_pylist() if t][: args.batches * cfg.distill.batch_size]
    rows = args.batches * cfg.distill.batch_size
    histories = users.column("train_history_text").to_pylist()[:rows]
    ec = cfg.embed
    encoder = distill.load_student(ec.encoder, "cpu", ec.max_seq_length)
    metadata = items.column("metadata_text").to_pylist()[:rows]
    per = {
        "catalogue": items.num_rows,
        "sasrec": sasrec_flops(users, items, cfg.sasrec, args.batches),
        "distill_user": encoder_flops(encoder, histories, cfg.distill.batch_size, True),
        "encode_history": encoder_flops(encoder, histories, ec.batch_size, False),
        "encode_reasoning": encoder_flops(encoder, reasoning, ec.batch_size, False),
        "encode_metadata": encoder_flops(encoder, metadata, ec.batch_size, False),
        "project_user": projection_flops(cfg.project),
        "generate": {k: 2 * teacher * n for k, n in computed.items()},
    }
    trained = json.loads((results.FOLDER / "sasrec_beauty.json").read_text())
    epochs = {"sasrec": trained["epochs_trained"], "distill": cfg.distill.epochs, "project": cfg.project.epochs}
    positions = sum(max(len(training_part(s)) - 1, 0) for s in index_sequences(users, items))
    works = {
        "beauty": {"users": users.num_rows, "items": items.num_rows, "positions": positions},
        "users_1m": {"users": MILLION, "items": MILLION, "positions": round(positions * MILLION / users.num_rows)},
    }
    plan = {}
    for name, work in works.items():
        flops = stage_flops(work, per, epochs, cfg.sasrec.model.hidden_size, cfg.sasrec.eval_every)
        stages = {
            stage: {"pflop": f / 1e15, **{gpu: gpu_hours(f, spec) for gpu, spec in GPUS.items()}}
            for stage, f in flops.items()
        }
        stages["generate, an 8B teacher (prefill + vLLM decoding)"] = {
            "pflop": (work["users"] * computed["oracle"] + work["items"] * computed["item"]) * 2 * TEACHER_8B / 1e15,
            **{gpu: generation_8b(work, tokens, spec) for gpu, spec in GPUS.items()},
        }
        plan[name] = {"workload": work, "stages": stages}
    out = {
        "measured_flops": per,
        "teacher_parameters": teacher,
        "epochs": epochs,
        "utilisation": UTILISATION,
        "gpus": GPUS,
        "decode_8b_h100_tokens_per_s": {"value": DECODE_8B_H100, "source": DECODE_SOURCE},
        "plan": plan,
    }
    if args.out:
        results.FOLDER = Path(args.out)
    results.write("cluster_plan", out, markdown(out), cfg.model_dump(mode="json"))


def markdown(out: dict) -> str:
    gpus = list(out["gpus"])
    lines = [
        "# GPU hours per stage: all of Beauty and a million users",
        "",
        f"FLOPs measured on real batches here (torch's flop counter), GPU time at {out['utilisation']:.0%} of dense "
        "bf16 peak (a lower bound: small models are launch-bound on a GPU), dollars at on-demand AWS prices "
        f"(sources in the JSON). Epochs: {out['epochs']}.",
        "",
        "| workload | stage | PFLOP | " + " | ".join(f"{g} hours | {g} $" for g in gpus) + " |",
        "|---|---|---|" + "---|---|" * len(gpus),
    ]
    for name, workload in out["plan"].items():
        for stage, row in workload["stages"].items():
            cells = " | ".join(f"{row[g]:,.3g} | {row[g] * out['gpus'][g]['usd_per_hour']:,.3g}" for g in gpus)
            lines.append(f"| {name} | {stage} | {row['pflop']:,.3g} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
