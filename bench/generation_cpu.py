"""Generation speed on this CPU: the generate stage (ray.data.llm + vLLM) against naive Hugging Face.

    python -m bench.generation_cpu [--config configs/beauty-teacher-cpu.yaml] [--prompts 64]

One run, same machine, same model folder, same prompts (the oracle prompts of a fixed sample of
Beauty users, rendered with the model's chat template and the prefilled lead-in), same greedy
decoding, token cap and repetition penalty:

1. ``job``: the generate stage, end to end (Ray Data start, vLLM engine start and generation),
   into a scratch storage folder;
2. ``hf_one_at_a_time``: ``transformers`` ``generate``, one prompt after another;
3. ``hf_batched``: ``generate`` on left-padded batches.

Writes bench/results/generation_cpu.json and .md, with ``oracle_users_generated`` read from the
committed teacher outputs (teacher_outputs/beauty-cpu/summary.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import results
from r2end_core import storage
from r2end_core.config import load_config
from r2end_core.layout import Layout
from r2end_core.teacher import outputs, prompts
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.model import resolve_teacher
from ray_jobs import generate
from ray_jobs.runtime import connect

TEACHER_OUTPUTS = Path(__file__).parents[1] / "teacher_outputs" / "beauty-cpu"


def run_job(cfg, scratch: str) -> dict:
    shutil.copytree(storage.join(cfg.storage_path, "prepared"), Path(scratch) / "prepared")
    cfg.storage_path = scratch
    connect(cfg.ray)
    summary = generate.run(cfg)
    ray.shutdown()
    texts = dict(
        zip(*outputs.read_generated(Layout(scratch), KINDS["oracle"]).select(["user_id", "text"]).to_pydict().values())
    )
    return {
        "seconds": summary.seconds,
        "seconds_to_first_commit": summary.seconds_to_first_commit,
        "output_tokens": summary.output_tokens,
        "texts": texts,
    }


def hf_generate(model, tokenizer, chats: list[str], cap: int, penalty: float, batch_size: int) -> dict:
    """Greedy generate over ``chats`` in batches; counts new tokens up to each row's end of sequence."""
    started, output_tokens, texts = time.time(), 0, []
    for start in range(0, len(chats), batch_size):
        batch = tokenizer(
            chats[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=cap,
                repetition_penalty=penalty,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in out[:, batch["input_ids"].shape[1] :]:
            ends = (row == tokenizer.eos_token_id).nonzero()
            new = row[: int(ends[0]) + 1] if len(ends) else row
            output_tokens += len(new)
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
    seconds = time.time() - started
    return {"seconds": round(seconds, 1), "output_tokens": output_tokens, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/beauty-teacher-cpu.yaml")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(
        args.config, [f"generate.max_users={args.prompts}", "generate.kinds=[oracle]", "generate.time_budget_s=null"]
    )
    gc, settings = cfg.generate, cfg.model_dump(mode="json")  # before the job points the config at its scratch

    users, items = Layout(cfg.storage_path).read_users(), Layout(cfg.storage_path).read_items()
    keys = outputs.sample_keys(users.column("user_id").to_pylist(), gc.max_users, gc.sample_seed)
    requests = outputs.build_requests(KINDS["oracle"], users, items, keys, gc.max_words)

    with tempfile.TemporaryDirectory(prefix="r2end-bench-gen-") as scratch:
        job = run_job(cfg, scratch)

    torch.set_num_threads(args.threads)
    folder = resolve_teacher(gc.teacher)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    chats = [prompts.render_chat(tokenizer, "oracle", r["prompt"]) for r in requests]
    one = hf_generate(model, tokenizer, chats, gc.token_cap, gc.repetition_penalty, batch_size=1)
    batched = hf_generate(model, tokenizer, chats, gc.token_cap, gc.repetition_penalty, batch_size=args.hf_batch_size)

    job_texts = [job["texts"].get(r["key"]) for r in requests]
    hf_texts = [
        outputs.output_row(KINDS["oracle"], r["key"], gc.teacher, t, None, None, gc.token_cap, gc.max_words)["text"]
        for r, t in zip(requests, one["texts"])
    ]
    methods = {"job": job, "hf_one_at_a_time": one, f"hf_batched_{args.hf_batch_size}": batched}
    for m in methods.values():
        m.pop("texts")
        m["tokens_per_s"] = round(m["output_tokens"] / m["seconds"], 2)
    committed = (
        json.loads((TEACHER_OUTPUTS / "summary.json").read_text())
        if (TEACHER_OUTPUTS / "summary.json").exists()
        else None
    )
    result = {
        "model": gc.teacher,
        "prompts": len(requests),
        "token_cap": gc.token_cap,
        "max_words": gc.max_words,
        "repetition_penalty": gc.repetition_penalty,
        "threads": args.threads,
        "methods": methods,
        "speedup_vs_hf_naive": round(job["tokens_per_s"] / one["tokens_per_s"], 2),
        "speedup_vs_hf_batched": round(job["tokens_per_s"] / batched["tokens_per_s"], 2),
        "job_texts_equal_to_hf_one_at_a_time": sum(a == b for a, b in zip(job_texts, hf_texts)),
        "oracle_users_generated": None if committed is None else committed["run"]["kinds"]["oracle"]["rows"],
    }
    lines = [
        f"Generation on this CPU ({args.threads} threads): {len(requests)} oracle prompts, {gc.teacher}, greedy, "
        f"at most {gc.token_cap} new tokens, repetition penalty {gc.repetition_penalty}.",
        "",
        "| method | seconds | output tokens | tokens/s | vs HF one at a time |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {m['seconds']} | {m['output_tokens']} | {m['tokens_per_s']} | "
            f"{m['tokens_per_s'] / one['tokens_per_s']:.2f}x |"
            for name, m in methods.items()
        ],
        "",
        f"The job's time includes starting Ray Data and the vLLM engine. Its answers equal HF's (one at a time) "
        f"for {result['job_texts_equal_to_hf_one_at_a_time']} of {len(requests)} prompts.",
    ]
    results.write("generation_cpu", result, "\n".join(lines), settings)


if __name__ == "__main__":
    main()
