"""Export a generation run's teacher outputs to a committed folder, with what it cost and what all
of Beauty would cost.

    python -m bench.teacher_outputs [--config configs/beauty-teacher-cpu.yaml] [--set ...] \
        [--out teacher_outputs/beauty-cpu]

Writes to ``--out``: ``oracle.parquet``, ``unguided.parquet``, ``profile.parquet`` and ``items.parquet`` (the
merged outputs of the kinds generated, zstd-compressed, schemas in ``r2end_core.schemas``),
``config.yaml`` (the config the run resolved, with its ``--set`` overrides),
``unguided_grounding.parquet`` (``grounding.GROUNDING_SCHEMA``: rejection sampling for ablation
2, when unguided answers were generated) and ``summary.json``: the run's own summary, the
rejection-sampling counts and the projected time for every Beauty user and item. A run that
extends a committed folder (``generate.extends``) exports only its new keys; the training stage
joins the folders (``embed.teacher_outputs``). A run exported to a folder that already holds outputs
of the same teacher and prompts (one it extends, or an earlier export of the same storage path) adds
its keys to it, and ``summary.json`` lists every run that made the folder (``runs``): so a generation
cut by time budgets across sessions, each run resuming what the committed folder holds, is committed
as one folder. The projection uses the exact prompt tokens of every prompt and the run's mean output
tokens per kind:

* this CPU: the run's seconds per token (prompt + output), times all tokens;
* one GPU (L4, H100): prefill at 40% of bf16 peak FLOPs (2 x parameters per token); decoding in
  steps of 256 sequences, each step reading the weights and the batch's KV cache from memory at
  the card's bandwidth, and never faster than 5 ms (vLLM's per-step overhead for a small model).
  These are assumptions, not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from transformers import AutoConfig, AutoTokenizer

from r2end_core import storage
from r2end_core.config import PipelineConfig, load_config
from r2end_core.layout import Layout
from r2end_core.summaries import GenerateSummary
from r2end_core.teacher import grounding, outputs, prompts
from r2end_core.teacher.folders import read_teacher_outputs
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.model import resolve_teacher
from r2end_core.text import encoders

GPUS = {"L4": {"bf16_tflops": 121, "memory_gb_s": 300}, "H100 SXM": {"bf16_tflops": 989, "memory_gb_s": 3350}}
DECODE_BATCH, PREFILL_UTILISATION, MIN_STEP_S = 256, 0.4, 0.005


def as_given(cfg: PipelineConfig) -> dict:
    """The config with its local paths relative to this folder again, as the command gave them."""
    tree = cfg.model_dump(mode="json")
    relative = lambda path: path if storage.is_uri(path) else os.path.relpath(path)  # noqa: E731
    tree["storage_path"], tree["prepare"]["dataset_path"] = (
        relative(cfg.storage_path),
        relative(cfg.prepare.dataset_path),
    )
    tree["generate"]["extends"] = [relative(folder) for folder in cfg.generate.extends]
    return tree


def prompt_tokens(tokenizer, kind: str, requests: list[dict]) -> list[int]:
    rendered = [prompts.render_chat(tokenizer, kind, r["prompt"]) for r in requests]
    return [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def parameters(c) -> int:
    """A decoder's weights from its transformers config: attention (grouped-query), gated MLP, embeddings."""
    return round(
        c.num_hidden_layers
        * (
            4 * c.hidden_size**2 * (1 + c.num_key_value_heads / c.num_attention_heads) / 2
            + 3 * c.hidden_size * c.intermediate_size
        )
        + c.vocab_size * c.hidden_size
    )


def gpu_seconds(model_config, prompt_total: int, output_total: int, mean_context: float, gpu: dict) -> float:
    c, params = model_config, parameters(model_config)
    prefill = 2 * params * prompt_total / (gpu["bf16_tflops"] * 1e12 * PREFILL_UTILISATION)
    kv_bytes_per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2
    step_bytes = 2 * params + DECODE_BATCH * mean_context * kv_bytes_per_token
    step = max(MIN_STEP_S, step_bytes / (gpu["memory_gb_s"] * 1e9))
    return prefill + output_total / DECODE_BATCH * step


def added_to(folder: pa.Table, new: pa.Table, kind, teacher: str) -> pa.Table:
    """``folder``'s rows of ``kind`` with ``new``'s added, one row per key (a key's success over its failure,
    the latest of two); rows of another prompt version or teacher are refused, as ``generate.extends`` does."""
    outputs.extended_keys(folder.cast(kind.schema), kind, teacher, ["the folder exported to"])
    return outputs.latest_per_key(pa.concat_tables([folder.cast(kind.schema), new.cast(kind.schema)]), kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/beauty-teacher-cpu.yaml")
    parser.add_argument("--out", default="teacher_outputs/beauty-cpu")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="the overrides the generate run was given",
    )
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    overrides = "".join(f" --set {o}" for o in args.set)
    layout, gc, out = Layout(cfg.storage_path), cfg.generate, Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not storage.exists(layout.generation_summary):
        raise SystemExit(
            f"no generation run under {layout.root}: run "
            f"`python -m ray_jobs.generate --config {args.config}{overrides}` first"
        )
    run = GenerateSummary.read(layout.generation_summary, "generate").model_dump()
    into = out.resolve() if (out / "summary.json").exists() else None  # a folder this run adds to
    others = [f for f in gc.extends if Path(f).resolve() != into]
    extended = read_teacher_outputs(others, layout) if others else {}
    generated = {kind.name: outputs.read_generated(layout, kind) for kind in map(KINDS.get, gc.kinds)}
    if all(table is None for table in generated.values()):
        raise SystemExit(f"no {' or '.join(generated)} outputs under {layout.generated('')}: nothing to export")
    for kind in map(KINDS.get, gc.kinds):
        table = generated[kind.name]
        if table is None:  # a time budget spent before this kind began: the next run's export adds it
            continue
        if extended.get(kind.name) is not None:  # the other folders this run extends already hold these keys
            key = kind.key_column
            table = table.filter(pc.invert(pc.is_in(table[key], extended[kind.name][key])))
        if into and (out / kind.export_file).exists():
            table = added_to(pq.read_table(out / kind.export_file), table, kind, gc.teacher)
        pq.write_table(table, out / kind.export_file, compression="zstd", compression_level=19)
    (out / "config.yaml").write_text(
        f"# The config the run resolved: {args.config}{overrides}\n" + yaml.safe_dump(as_given(cfg), sort_keys=False)
    )

    folder = resolve_teacher(gc.teacher)
    tokenizer, model_config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    users, items = layout.read_users(), layout.read_items()
    full = {}
    for kind in map(KINDS.get, gc.kinds):
        keys = (items if kind.about == "items" else users).column(kind.key_column).to_pylist()
        table = outputs.read_generated(layout, kind)
        ok = table.filter(table["error"].is_null()) if table is not None else None
        mean_output = (
            (sum(ok["output_tokens"].to_pylist()) / ok.num_rows) if ok is not None and ok.num_rows else gc.token_cap
        )
        counts = prompt_tokens(tokenizer, kind.name, outputs.build_requests(kind, users, items, keys, gc.max_words))
        full[kind.name] = {
            "rows": len(keys),
            "prompt_tokens": sum(counts),
            "output_tokens": round(mean_output * len(keys)),
            "mean_output_tokens_in_run": round(mean_output, 1),
        }
    prompt_total = sum(k["prompt_tokens"] for k in full.values())
    output_total = sum(k["output_tokens"] for k in full.values())
    run_tokens = sum(k["prompt_tokens"] + k["output_tokens"] for k in run["kinds"].values())
    cpu_hours = run["seconds"] / max(1, run_tokens) * (prompt_total + output_total) / 3600
    mean_context = (prompt_total + output_total / 2) / sum(k["rows"] for k in full.values())
    projection = {
        "all_of_beauty": full,
        "prompt_tokens": prompt_total,
        "output_tokens": output_total,
        "this_cpu_hours": round(cpu_hours, 1),
        "one_gpu_hours": {
            name: round(gpu_seconds(model_config, prompt_total, output_total, mean_context, gpu) / 3600, 2)
            for name, gpu in GPUS.items()
        },
        "assumptions": __doc__.split("* this CPU:")[1].strip(),
    }
    earlier = json.loads((out / "summary.json").read_text()).get("runs", []) if into else []
    summary = {
        "runs": [r for r in earlier if r.get("finished_at") != run["finished_at"]] + [run],
        "projection": projection,
        "command": f"python -m ray_jobs.generate --config {args.config}{overrides}",
        "export": f"python -m bench.teacher_outputs --config {args.config}{overrides} --out {args.out}",
    }
    if "unguided" in gc.kinds:
        # Rejection sampling for ablation 2, with the encoder the training stage starts from.
        encoder = encoders.load_encoder("bundled:all-minilm-l6-v2")
        grounded = grounding.ground_unguided(
            outputs.read_generated(layout, KINDS["unguided"]),
            users,
            items,
            lambda texts: encoders.encode(encoder, texts),
        )
        pq.write_table(grounded, out / "unguided_grounding.parquet", compression="zstd")
        summary["rejection_sampling"] = {
            "grounded": grounded.num_rows,
            "accepted_top100": grounded.filter(grounded["accepted"]).num_rows,
            "named_an_item": grounded.filter(pc.equal(grounded["grounded_on"], "named_item")).num_rows,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v["rows"] for k, v in run["kinds"].items()}), "rows;", run["seconds"], "s")
    print(json.dumps({k: v for k, v in projection.items() if k != "all_of_beauty" and k != "assumptions"}))
    if "rejection_sampling" in summary:
        print("rejection sampling:", json.dumps(summary["rejection_sampling"]))


if __name__ == "__main__":
    main()
