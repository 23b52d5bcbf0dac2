"""Embed stage: item embeddings Enc(M_i ⊕ D_i) and the students' targets, encoded on Ray Data.

    ray job submit --working-dir . -- python -m ray_jobs.embed --config configs/beauty-sample.yaml

Reads the prepared tables and the teacher outputs (``embed.teacher_outputs``, else this storage path's
``generated/``); writes ``embeddings/`` (schemas in ``r2end_core.schemas``). A re-run whose inputs
(encoder settings and the bytes of every table it reads) are unchanged reuses what it wrote; a bundled encoder's
vectors are also kept per text (``caches/text_vectors/``), so a run whose inputs changed encodes only new texts.
"""

from __future__ import annotations

import functools
import time

from r2end_core import storage
from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from r2end_core.models.r2end import targets
from r2end_core.summaries import EmbedReport
from r2end_core.teacher.folders import read_teacher_outputs
from r2end_core.text.cache import cached_encode, encoder_id
from ray_jobs.ray_data import encode_texts
from ray_jobs.runtime import log, run_stage

OUTPUTS = ("items.parquet", "targets.parquet", "report.json")


def run(cfg: PipelineConfig) -> EmbedReport:
    layout, ec, started = Layout(cfg.storage_path), cfg.embed, time.time()
    digest = targets.inputs_digest(ec, layout)
    if all(storage.exists(layout.embeddings(name)) for name in OUTPUTS):
        written = EmbedReport.read(layout.embeddings("report.json"), "embed")
        if written.inputs_digest == digest:
            log.info("embed: inputs unchanged, the written embeddings are reused")
            return written.model_copy(update={"reused": True})
        storage.delete_file(layout.embeddings("report.json"))  # the embeddings are about to change under it
    users, items = layout.read_users(), layout.read_items()
    source = " + ".join(map(str, ec.teacher_outputs or [layout.path("generated")]))

    encode = functools.partial(encode_texts, source=ec.encoder, ec=ec, resources=cfg.resources)
    if ec.encoder.startswith("bundled:"):  # weights fixed by their sha256: each text is encoded once, ever
        cache = encoder_id(ec.encoder, ec.max_seq_length, "start")
        encode = functools.partial(cached_encode, layout=layout, encoder=cache, encode=encode)
    made = targets.embed(users, items, read_teacher_outputs(ec.teacher_outputs, layout), source, encode)
    for name in ("items", "targets"):
        storage.write_table(made[name], layout.embeddings(f"{name}.parquet"))
    if made["grounding"] is not None:
        storage.write_table(made["grounding"], layout.embeddings("unguided_grounding.parquet"))
    report = EmbedReport(
        teacher_outputs=source,
        encoder=ec.encoder,
        max_seq_length=ec.max_seq_length,
        **made["counts"],
        wall_time_s=round(time.time() - started, 1),
        inputs_digest=digest,
    )
    report.write(layout.embeddings("report.json"))
    log.info(
        f"embed: {report.items:,} items ({report.items_with_description:,} with a teacher description), "
        f"targets {report.targets}"
    )
    return report


if __name__ == "__main__":
    run_stage(__doc__, run, "embed")
