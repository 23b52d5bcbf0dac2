"""Generation speed on this CPU: vLLM engine settings side by side, the generate stage, and naive Hugging Face.

    python -m bench.generation_cpu [--config configs/beauty-teacher-full.yaml] [--prompts 96] [--item-prompts 64]

One run, same machine, same model folder, same prompts (the oracle prompts of a fixed sample of Beauty
users and the item prompts of a fixed sample of items, rendered with the model's chat template and their
prefilled lead-ins), same greedy decoding, token cap and repetition penalty:

1. ``engines``: vLLM's offline engine on every prompt with each of ``SETTINGS`` in turn, each in a fresh
   process: from the settings the committed teacher outputs were made with (float32, vLLM's CPU default KV
   block of 128 tokens, 64 sequences at once) to the config's. Per setting: tokens processed per second
   (prompt and output tokens over the generation's seconds, the engine's start apart), and per answer
   the prompt tokens, those vLLM's prefix cache served (its ``num_cached_tokens``) and those computed,
   and how many answers are word for word those of the committed settings;
2. ``job``: the generate stage end to end with the config's settings (Ray Data start, engine start,
   generation), into a scratch storage folder;
3. ``hf_one_at_a_time``: ``transformers`` ``generate`` (float32), one prompt after another: the naive way.

Writes bench/results/generation_cpu.json and .md, with ``oracle_users_generated`` read from the
committed teacher outputs (teacher_outputs/beauty-cpu/summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import results
from r2end_core import storage
from r2end_core.config import GenerateConfig, load_config
from r2end_core.layout import Layout
from r2end_core.teacher import outputs, prompts
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.model import resolve_teacher

TEACHER_OUTPUTS = Path(__file__).parents[1] / "teacher_outputs" / "beauty-cpu"
#: Engine settings compared, each a change on the one before; the last is the config's own.
SETTINGS = {
    "committed": {"dtype": "float32", "block_size": None, "max_num_seqs": 64},
    "block_32": {"dtype": "float32", "block_size": 32, "max_num_seqs": 64},
    "bfloat16": {"dtype": "bfloat16", "block_size": 32, "max_num_seqs": 64},
    "config": {},
}
BASE = "committed"


def requests_of(cfg, oracle_prompts: int, item_prompts: int) -> list[dict]:
    """``{"kind", "key", "prompt", "subject"}``: the generate stage's requests for the two samples (users'
    first); ``subject``: the metadata of the item the answer is about (the oracle's target, or the item)."""
    layout, gc = Layout(cfg.storage_path), cfg.generate
    users, items = layout.read_users(), layout.read_items()
    metadata = dict(zip(items["item_id"].to_pylist(), items["metadata_text"].to_pylist()))
    target = dict(zip(users["user_id"].to_pylist(), users["train_target"].to_pylist()))
    out = []
    for name, table, limit in (("oracle", users, oracle_prompts), ("item", items, item_prompts)):
        kind = KINDS[name]
        keys = outputs.sample_keys(table.column(kind.key_column).to_pylist(), limit, gc.sample_seed)
        out += [
            {"kind": name, **r, "subject": metadata[target[r["key"]] if name == "oracle" else r["key"]]}
            for r in outputs.build_requests(kind, users, items, keys, gc.max_words)
        ]
    return out


def engine_run(gc: GenerateConfig, requests: list[dict]) -> dict:
    """vLLM's offline engine on ``requests`` with ``gc``'s engine settings and sampling (in this process)."""
    os.environ.update(gc.cpu_env)
    from vllm import LLM, SamplingParams

    folder = resolve_teacher(gc.teacher)
    chats = [r["prompt"] for r in outputs.render_prompts(requests, folder)]
    started = time.time()
    llm = LLM(model=folder, **gc.engine_kwargs)
    start_s, started = time.time() - started, time.time()
    answers = llm.generate(chats, SamplingParams(**gc.sampling))
    seconds = time.time() - started
    by_kind: dict[str, dict] = {}
    for r, a in zip(requests, answers):
        k = by_kind.setdefault(r["kind"], {"answers": 0, "prompt_tokens": 0, "cached_tokens": 0, "output_tokens": 0})
        k["answers"] += 1
        k["prompt_tokens"] += len(a.prompt_token_ids)
        k["cached_tokens"] += a.num_cached_tokens or 0
        k["output_tokens"] += len(a.outputs[0].token_ids)
    return {
        "engine_start_s": round(start_s, 1),
        "seconds": round(seconds, 1),
        "kinds": by_kind,
        "texts": [a.outputs[0].text for a in answers],
    }


def engine_in_fresh_process(args, setting: str) -> dict:
    """``engine_run`` with one of ``SETTINGS`` in a new Python process: every engine starts from nothing."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-m", "bench.generation_cpu", "--config", args.config, "--prompts", str(args.prompts)]
        cmd += ["--item-prompts", str(args.item_prompts), "--engine", setting, "--engine-out", out.name]
        subprocess.run(cmd, check=True)
        return json.loads(Path(out.name).read_text())


def with_setting(cfg, setting: str):
    return cfg.with_section("generate", **SETTINGS[setting])


def summarise_engine(run: dict, base: dict, similarity: float, on_subject: float) -> dict:
    """Per-answer token counts and throughput of one engine run; answers compared with ``base``'s."""
    kinds = run["kinds"]
    prompt, cached, output = (
        sum(k[f] for k in kinds.values()) for f in ("prompt_tokens", "cached_tokens", "output_tokens")
    )
    return {
        "engine_start_s": run["engine_start_s"],
        "seconds": run["seconds"],
        "processed_tokens_per_s": round((prompt + output) / run["seconds"], 1),
        "computed_tokens_per_s": round((prompt - cached + output) / run["seconds"], 1),
        "per_answer": {
            name: {
                "prompt_tokens": round(k["prompt_tokens"] / k["answers"], 1),
                "cached_prompt_tokens": round(k["cached_tokens"] / k["answers"], 1),
                "computed_prompt_tokens": round((k["prompt_tokens"] - k["cached_tokens"]) / k["answers"], 1),
                "output_tokens": round(k["output_tokens"] / k["answers"], 1),
            }
            for name, k in kinds.items()
        },
        "answers_equal_to_committed": sum(a == b for a, b in zip(run["texts"], base["texts"])),
        "mean_cosine_to_committed": round(similarity, 4),
        "mean_cosine_to_subject": round(on_subject, 4),
    }


def cosine_to(texts: list[str], base: list[str], encoder) -> float:
    """Mean cosine (MiniLM) between each text and the same prompt's in ``base``. Against another setting's
    answers: how far a setting moves what the teacher says, beyond word-for-word equality; against the
    metadata of the item an answer is about: whether it stays on its subject as well."""
    from r2end_core.text import encoders

    a, b = encoders.encode(encoder, texts), encoders.encode(encoder, base)
    return float(np.mean(np.sum(a * b, axis=1)))


def run_job(cfg, scratch: str, oracle_prompts: int, item_prompts: int) -> dict:
    import ray

    from ray_jobs import generate
    from ray_jobs.runtime import connect

    shutil.copytree(storage.join(cfg.storage_path, "prepared"), Path(scratch) / "prepared")
    cfg = cfg.with_section(
        "generate", max_users=oracle_prompts, max_items=item_prompts, kinds=["oracle", "item"], time_budget_s=None
    )
    cfg.storage_path = scratch
    connect(cfg.ray)
    summary = generate.run(cfg)
    ray.shutdown()
    texts = {}
    for name in ("oracle", "item"):
        kind = KINDS[name]
        table = outputs.read_generated(Layout(scratch), kind)
        texts.update({(name, k): t for k, t in zip(table[kind.key_column].to_pylist(), table["text"].to_pylist())})
    prompt = sum(k.prompt_tokens for k in summary.kinds.values())
    return {
        "seconds": summary.seconds,
        "seconds_to_first_commit": summary.seconds_to_first_commit,
        "prompt_tokens": prompt,
        "output_tokens": summary.output_tokens,
        "processed_tokens_per_s": round((prompt + summary.output_tokens) / summary.seconds, 1),
        "texts": texts,
    }


def hf_generate(model, tokenizer, chats: list[str], cap: int, penalty: float) -> dict:
    """Greedy generate over ``chats`` one at a time; counts new tokens up to each row's end of sequence."""
    import torch

    started, output_tokens, texts = time.time(), 0, []
    for chat in chats:
        batch = tokenizer([chat], return_tensors="pt", add_special_tokens=False)
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


def hugging_face(gc: GenerateConfig, requests: list[dict], threads: int) -> dict:
    """Naive ``transformers`` generation (float32) of every prompt, one at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    folder = resolve_teacher(gc.teacher)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    chats = [prompts.render_chat(tokenizer, r["kind"], r["prompt"]) for r in requests]
    return hf_generate(model, tokenizer, chats, gc.token_cap, gc.repetition_penalty)


def as_row_text(gc: GenerateConfig, request: dict, continuation: str) -> str | None:
    """What the generate stage stores for a continuation (the prefill joined, cut to the word limit)."""
    kind = KINDS[request["kind"]]
    return outputs.output_row(kind, request["key"], gc.teacher, continuation, None, None, gc.token_cap, gc.max_words)[
        "text"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/beauty-teacher-full.yaml")
    parser.add_argument("--prompts", type=int, default=96, help="oracle prompts (a fixed sample of users)")
    parser.add_argument("--item-prompts", type=int, default=64, help="item prompts (a fixed sample of items)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the Hugging Face rows")
    parser.add_argument("--engine", choices=SETTINGS, help=argparse.SUPPRESS)  # one engine run, in a child
    parser.add_argument("--engine-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = load_config(args.config, [])
    requests = requests_of(cfg, args.prompts, args.item_prompts)
    if args.engine:
        Path(args.engine_out).write_text(json.dumps(engine_run(with_setting(cfg, args.engine).generate, requests)))
        return
    settings = cfg.model_dump(mode="json")  # before the job points the config at its scratch

    engines = {name: engine_in_fresh_process(args, name) for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="r2end-bench-gen-") as scratch:
        job = run_job(cfg, scratch, args.prompts, args.item_prompts)
    hf = hugging_face(cfg.generate, requests, args.threads)

    from r2end_core.text import encoders

    encoder = encoders.load_encoder("bundled:all-minilm-l6-v2")
    base = engines[BASE]
    summary = {
        name: {
            **summarise_engine(
                run,
                base,
                cosine_to(run["texts"], base["texts"], encoder),
                cosine_to(run["texts"], [r["subject"] for r in requests], encoder),
            ),
            "settings": with_setting(cfg, name).generate.engine_kwargs,
        }
        for name, run in engines.items()
    }
    for s in summary.values():
        s["speedup_vs_committed"] = round(s["processed_tokens_per_s"] / summary[BASE]["processed_tokens_per_s"], 2)
    stored = [as_row_text(cfg.generate, r, t) for r, t in zip(requests, engines["config"]["texts"])]
    job_equal = sum(job["texts"].get((r["kind"], r["key"])) == t for r, t in zip(requests, stored))
    hf_equal = sum(
        as_row_text(cfg.generate, r, t) == as_row_text(cfg.generate, r, h)
        for r, t, h in zip(requests, engines[BASE]["texts"], hf.pop("texts"))
    )
    hf["output_tokens_per_s"] = round(hf["output_tokens"] / hf["seconds"], 2)
    job.pop("texts")
    committed = (
        json.loads((TEACHER_OUTPUTS / "summary.json").read_text())
        if (TEACHER_OUTPUTS / "summary.json").exists()
        else None
    )
    result = {
        "model": cfg.generate.teacher,
        "prompts": {"oracle": args.prompts, "item": args.item_prompts},
        "token_cap": cfg.generate.token_cap,
        "max_words": cfg.generate.max_words,
        "repetition_penalty": cfg.generate.repetition_penalty,
        "engines": summary,
        "job": job,
        "job_answers_equal_to_config_engine": job_equal,
        "hf_one_at_a_time": hf,
        "hf_one_at_a_time_equal_to_committed_engine": hf_equal,
        "speedup_job_vs_hf_naive": round(job["output_tokens"] / job["seconds"] / hf["output_tokens_per_s"], 2),
        "oracle_users_generated": None if committed is None else committed["run"]["kinds"]["oracle"]["rows"],
    }
    results.write("generation_cpu", result, report(result), settings)


def report(r: dict) -> str:
    lines = [
        f"Generation on this CPU: {r['prompts']['oracle']} oracle and {r['prompts']['item']} item prompts, "
        f"{r['model']}, greedy, at most {r['token_cap']} new tokens, repetition penalty {r['repetition_penalty']}.",
        "",
        "vLLM engine settings, side by side (each a change on the row above; generation seconds, the engine's "
        "start apart; per answer: prompt tokens / served by the prefix cache / output tokens):",
        "",
        "| setting | dtype | KV block | seqs | seconds | tokens processed/s | speedup "
        "| oracle prompt / cached / output | item prompt / cached / output | answers as committed "
        "| cosine to committed | cosine to subject |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total = sum(r["prompts"].values())
    for name, e in r["engines"].items():
        s, per = e["settings"], e["per_answer"]
        cells = [
            f"{per[k]['prompt_tokens']:.0f} / {per[k]['cached_prompt_tokens']:.0f} / {per[k]['output_tokens']:.0f}"
            for k in ("oracle", "item")
        ]
        lines.append(
            f"| {name} | {s['dtype']} | {s.get('block_size', 'default (128)')} | {s['max_num_seqs']} | {e['seconds']} "
            f"| {e['processed_tokens_per_s']} | {e['speedup_vs_committed']:.2f}x | {cells[0]} | {cells[1]} "
            f"| {e['answers_equal_to_committed']}/{total} | {e['mean_cosine_to_committed']:.3f} "
            f"| {e['mean_cosine_to_subject']:.3f} |"
        )
    job, hf = r["job"], r["hf_one_at_a_time"]
    lines += [
        "",
        "End to end on the same prompts (the job's seconds include starting Ray Data and the engine):",
        "",
        "| method | seconds | output tokens | output tokens/s | speedup |",
        "|---|---|---|---|---|",
        f"| job (the config's settings) | {job['seconds']} | {job['output_tokens']} "
        f"| {job['output_tokens'] / job['seconds']:.2f} | {r['speedup_job_vs_hf_naive']:.2f}x |",
        f"| HF generate one at a time (float32) | {hf['seconds']} | {hf['output_tokens']} "
        f"| {hf['output_tokens_per_s']} | 1.00x |",
        "",
        f"The job's answers equal the config's engine's for {r['job_answers_equal_to_config_engine']} of {total} "
        f"prompts; HF's equal the committed settings' engine's for {r['hf_one_at_a_time_equal_to_committed_engine']} "
        f"of {total}. Cosine to subject: MiniLM's cosine between an answer and the metadata of the item it is "
        "about (the oracle's target item, the described item), a check that a setting's answers stay on topic.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
