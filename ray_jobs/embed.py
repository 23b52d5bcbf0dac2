"""Embed stage: item embeddings Enc(M_i ⊕ D_i) and the students' targets, encoded on Ray Data.

    ray job submit --working-dir . -- python -m ray_jobs.embed --config configs/beauty-sample.yaml

Reads the prepared tables and the teacher outputs (``embed.teacher_outputs``, else this storage
path's ``generated/``); writes ``embeddings/`` (schemas in ``r2end_core.embeddings``). A re-run
whose inputs (encoder settings and the bytes of every table it reads) are unchanged reuses the
written embeddings instead of encoding again.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import artifacts, embeddings, grounding, storage
from r2end_core.config import PipelineConfig
from ray_jobs.encode import encode_texts
from ray_jobs.runtime import run_stage


OUTPUTS = ("items.parquet", "targets.parquet")


def inputs_digest(cfg: PipelineConfig) -> str:
    """What the embeddings depend on: the encoder settings and the content of every file read."""
    root, ec = cfg.storage_path, cfg.embed
    if ec.teacher_outputs:
        folders = [f for s in ec.teacher_outputs for f in (s.folder, s.same_users_as) if f]
        teacher_files = [f for folder in folders for f in storage.list_files(folder)]
    else:
        teacher_files = [f for kind in ("oracle", "unguided", "item") for f in storage.list_files(artifacts.generated_path(root, kind))]
    files = [*storage.list_files(artifacts.users_path(root)), artifacts.items_path(root), *teacher_files]
    inputs = {"encoder": ec.encoder, "max_seq_length": ec.max_seq_length, "files": [storage.sha256(f) for f in files]}
    if restricted := [str(s) for s in ec.teacher_outputs or [] if s.kinds or s.same_users_as]:
        inputs["restricted_sources"] = restricted  # only then: whole-folder embeddings keep their digest
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def written_digest(root: str) -> str:
    """The inputs digest of the embeddings under ``root``: the stages trained on them key their Ray
    Train runs by it, so new embeddings start new runs instead of resuming stale ones."""
    report_path = artifacts.embeddings_path(root, "report.json")
    if not storage.exists(report_path):
        raise FileNotFoundError(f"{report_path} not found: run the embed stage first")
    return storage.read_json(report_path)["inputs_digest"]


def run(cfg: PipelineConfig) -> dict:
    root, ec = cfg.storage_path, cfg.embed
    started = time.time()
    digest = inputs_digest(cfg)
    report_path = artifacts.embeddings_path(root, "report.json")
    if all(storage.exists(artifacts.embeddings_path(root, name)) for name in (*OUTPUTS, "report.json")):
        written = storage.read_json(report_path)
        if written.get("inputs_digest") == digest:
            return {**written, "reused": True}
        storage.delete_file(report_path)  # the embeddings are about to change under it
    users, items = artifacts.read_users(root), artifacts.read_items(root)
    outputs = embeddings.read_teacher_outputs(ec.teacher_outputs, root)
    source = " + ".join(map(str, ec.teacher_outputs or [storage.join(root, "generated")]))
    for kind in ("oracle", "unguided"):
        if outputs[kind] is not None:
            embeddings.check_users_known(outputs[kind], users, f"{source} ({kind})")

    encoded: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        """Each distinct text once: grounding re-reads item metadata the item embeddings already hold."""
        new = list(dict.fromkeys(t for t in texts if t not in encoded))
        if new:
            encoded.update(zip(new, encode_texts(new, ec.encoder, ec)))
        return np.stack([encoded[t] for t in texts])

    texts, described = embeddings.item_texts(items, outputs["item"])
    item_table = pa.table(
        {"item_id": items["item_id"], "item_index": items["item_index"], "has_description": described,
         "embedding": embeddings.embedding_column(encode(texts))},
        schema=embeddings.ITEM_EMBEDDING_SCHEMA,
    )
    storage.write_table(item_table, artifacts.embeddings_path(root, "items.parquet"))

    accepted = {}
    if outputs["unguided"] is not None:
        known = outputs["grounding"]
        ungrounded = outputs["unguided"] if known is None else outputs["unguided"].filter(
            pc.invert(pc.is_in(outputs["unguided"]["user_id"], known["user_id"])))
        if ungrounded.num_rows:  # rejection sampling, computed once per answer
            new = grounding.ground_unguided(ungrounded, users, items, encode)
            outputs["grounding"] = new if known is None else pa.concat_tables([known, new.cast(known.schema)])
            storage.write_table(outputs["grounding"], artifacts.grounding_path(root))
        accepted = dict(zip(outputs["grounding"].column("user_id").to_pylist(),
                            outputs["grounding"].column("accepted").to_pylist()))
    kinds, user_ids, target_texts, missing = [], [], [], []
    for target in embeddings.TARGET_KINDS:
        reasoning = outputs["unguided" if target == "unguided" else "oracle"]
        if reasoning is None:
            missing.append(target)
            continue
        ids, target_text = embeddings.target_texts(target, users, items, reasoning)
        kinds += [target] * len(ids)
        user_ids += ids
        target_texts += target_text
    if not target_texts:
        raise ValueError(f"{source}: no oracle or unguided teacher outputs to build distillation targets from")
    target_table = pa.table(
        {"user_id": user_ids, "target": kinds,
         "accepted": [accepted.get(u) if k == "unguided" else None for u, k in zip(user_ids, kinds)],
         "embedding": embeddings.embedding_column(encode(target_texts))},
        schema=embeddings.TARGET_EMBEDDING_SCHEMA,
    )
    storage.write_table(target_table, artifacts.embeddings_path(root, "targets.parquet"))

    report = {
        "teacher_outputs": source,
        "encoder": ec.encoder,
        "items": items.num_rows,
        "items_with_description": int(described.sum()),
        "items_metadata_only": int((~described).sum()),
        "targets": {k: kinds.count(k) for k in embeddings.TARGET_KINDS if k not in missing},
        "targets_missing": missing,
        "teacher_rows_without_text": {
            kind: outputs[kind].num_rows - embeddings.succeeded(outputs[kind]).num_rows
            for kind in ("oracle", "unguided", "item") if outputs[kind] is not None
        },
        "teacher_rows_outside_same_users": outputs["outside_same_users"],
        "unguided_accepted": int(sum(bool(v) for v in accepted.values())),
        "wall_time_s": round(time.time() - started, 1),
        "inputs_digest": digest,
    }
    storage.write_json(report, report_path)
    for path in storage.list_files(artifacts.encoder_user_embeddings_path(root)):  # cached under the old settings
        storage.delete_file(path)
    return report


if __name__ == "__main__":
    print(run_stage(__doc__, run))
