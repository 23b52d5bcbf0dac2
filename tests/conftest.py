"""Shared fixtures: a small slice of the real Beauty data, and a local Ray cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from r2end_core.config import load_config
from r2end_core.teacher.outputs import succeeded

REPO = Path(__file__).resolve().parents[1]
TEACHER_OUTPUTS = REPO / "teacher_outputs/beauty-cpu"
PROFILES = REPO / "teacher_outputs/beauty-cpu-profile-2000"  # the same 2,000 users' generated profiles
SLICE_USERS = 40
BEAUTY = Path(os.environ.get("R2END_BEAUTY", Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"))


@pytest.fixture(scope="session")
def beauty_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first 300 users of real Beauty (all their interactions) and the items they touch."""
    if not BEAUTY.exists():
        pytest.fail(f"Beauty data not found at {BEAUTY} (set R2END_BEAUTY)")
    inter = pq.read_table(BEAUTY / "interactions.parquet").to_pandas()
    users = inter["user_id"].drop_duplicates().head(300)
    inter = inter[inter["user_id"].isin(users)].reset_index(drop=True)
    items = pq.read_table(BEAUTY / "items.parquet").to_pandas()
    items = items[items["item_id"].isin(inter["item_id"])].reset_index(drop=True)
    return inter, items


def write_dataset(
    folder: Path, interactions: pd.DataFrame | pa.Table, items: pd.DataFrame | pa.Table, row_group_size=None
) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("interactions", interactions), ("items", items)):
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, folder / f"{name}.parquet", row_group_size=row_group_size)
    return str(folder)


@pytest.fixture
def beauty_dir(tmp_path, beauty_frames) -> str:
    inter, items = beauty_frames
    return write_dataset(tmp_path / "beauty", inter, items)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the stage tests (4 logical CPUs on 2 cores, as the configs use)."""
    import ray

    from ray_jobs.runtime import start_local

    start_local(num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


def prepare_tables(path: str, **overrides):
    """(report, users, items) as the prepare stage builds them (schemas.USERS, ITEMS), in this process."""
    from r2end_core import schemas
    from r2end_core.config import PrepareConfig
    from r2end_core.data import prepare

    prepared = prepare.prepare(PrepareConfig(dataset_path=path, **overrides), prepare.Parts.of)
    return prepared.report, prepare.collect(prepared.users, schemas.USERS), prepared.items


@pytest.fixture(scope="session")
def prepared_tables(tmp_path_factory, beauty_frames):
    """(users, items) of the 300-user slice, as the prepare stage builds them: prepared once (Arrow tables
    are immutable, so the tests share them)."""
    return prepare_tables(write_dataset(tmp_path_factory.mktemp("beauty"), *beauty_frames))[1:]


@pytest.fixture(scope="session")
def minilm_encode():
    """The bundled all-MiniLM-L6-v2, loaded once: texts -> unit vectors."""
    from r2end_core.text import encoders

    model = encoders.load_encoder("bundled:all-minilm-l6-v2")
    return lambda texts: encoders.encode(model, texts)


def catalogue_slice(items: pa.Table, size: int, keep: list[str] = ()) -> pa.Table:
    """The first ``size`` prepared items plus ``keep``: a real catalogue small enough to encode in seconds."""
    wanted = pc.or_(pc.less(items["item_index"], size), pc.is_in(items["item_id"], pa.array(list(keep), pa.string())))
    return items.filter(wanted)


@pytest.fixture(scope="session")
def slice_folders(tmp_path_factory) -> tuple[str, list[str]]:
    """(dataset folder, teacher-outputs folders): the first 40 users with oracle reasoning, all their
    interactions and items, and exactly their rows of the committed teacher outputs, split the way
    a run that extends a committed sample leaves them: the first half of the users with item
    descriptions and rejection sampling, the second half with their reasoning alone; every user's
    generated profile in a third folder."""
    root = tmp_path_factory.mktemp("slice")
    oracle = pq.read_table(TEACHER_OUTPUTS / "oracle.parquet")
    users = sorted(succeeded(oracle).column("user_id").to_pylist())[:SLICE_USERS]
    inter = pq.read_table(BEAUTY / "interactions.parquet")
    inter = inter.filter(pc.is_in(inter["user_id"], pa.array(users)))
    items = pq.read_table(BEAUTY / "items.parquet")
    items = items.filter(pc.is_in(items["item_id"], inter["item_id"].unique()))
    dataset = write_dataset(root / "beauty", inter, items)
    half = SLICE_USERS // 2
    parts = {
        root / "teacher_outputs": (
            ("oracle", "user_id", users[:half]),
            ("unguided", "user_id", users[:half]),
            ("unguided_grounding", "user_id", users[:half]),
            ("items", "item_id", items["item_id"]),
        ),
        root / "teacher_outputs_extension": (
            ("oracle", "user_id", users[half:]),
            ("unguided", "user_id", users[half:]),
        ),
        root / "profiles": (("profile", "user_id", users),),
    }
    for folder, tables in parts.items():
        folder.mkdir()
        for name, key, wanted in tables:
            table = pq.read_table((PROFILES if name == "profile" else TEACHER_OUTPUTS) / f"{name}.parquet")
            pq.write_table(table.filter(pc.is_in(table[key], pa.array(wanted))), folder / f"{name}.parquet")
    return dataset, [str(folder) for folder in parts]


def stage_config(tmp_path, dataset: str, outputs: list[str], *overrides: str):
    cfg = load_config(
        REPO / "configs/beauty-sample.yaml",
        [
            f"storage_path={tmp_path / 'artifacts'}",
            f"prepare.dataset_path={dataset}",
            "prepare.sample_users=null",
            f"embed.teacher_outputs={json.dumps(outputs)}",
            "embed.max_seq_length=128",
            "distill.batch_size=2",
            "distill.checkpoint_every=3",
            "distill.holdout_fraction=0.25",
            "project.epochs=2",
            "project.batch_size=8",
            "project.negatives=9",
            *overrides,
        ],
    )
    path = tmp_path / "config.yaml"  # for the stage run as its own process
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return cfg, path


@pytest.fixture(scope="session")
def embedded(tmp_path_factory, ray_cluster, slice_folders):
    """The slice prepared and embedded once, shared by the training and serving tests (which use
    their own run names): (config, its YAML file, the embed report)."""
    from ray_jobs import embed, prepare

    cfg, config_path = stage_config(tmp_path_factory.mktemp("stages"), *slice_folders)
    prepare.run(cfg)
    return cfg, config_path, embed.run(cfg)


@pytest.fixture(scope="session")
def zero3_student(embedded):
    """(config, distill summary): a student distilled once on the slice, to its ablation-3 target
    (Enc(target metadata)), by two Ray Train workers with DeepSpeed ZeRO-3 in bf16, on 29 users in
    batches of 4: the epoch's last batch has one row for two workers. The ZeRO-3 test checks it; the
    serving tests serve it (which target it learned does not matter there)."""
    from ray_jobs import distill

    cfg = (
        embedded[0]
        .with_section("resources", cpus_per_worker=1)
        .with_section(
            "distill",
            num_workers=2,
            zero_stage=3,
            dtype="bfloat16",
            batch_size=4,
            target="metadata",
            holdout_fraction=0.275,
            checkpoint_every=100,  # the last step's alone: nothing here resumes
            run_name="student-z3",
        )
    )
    return cfg, distill.run(cfg)


@pytest.fixture(scope="session")
def r2end_model(zero3_student):
    """(config, train summary): an R2END model (``r2end-serve``) on the ZeRO-3 student, its projection
    trained one epoch, with two CPUs per worker again: the model the serving tests serve and the students
    of a text model learn from."""
    from ray_jobs import project

    cfg = zero3_student[0].with_section("resources", cpus_per_worker=2)
    cfg = cfg.with_section("project", run_name="r2end-serve", student_run="student-z3", epochs=1)
    return cfg, project.run(cfg)


@pytest.fixture(scope="session")
def fused_student(r2end_model):
    """(config, train summary): our fused student (``fusion``): a small SASRec trained two epochs plus the
    R2END model, their weights searched on validation: the training test checks it, the serving test
    serves it."""
    from ray_jobs import train_fusion, train_sasrec

    cfg = r2end_model[0].with_section(
        "sasrec", max_epochs=2, batch_size=8, run_name="sasrec-fused", model={"hidden_size": 16, "inner_size": 16}
    )
    train_sasrec.run(cfg)
    cfg = cfg.with_section("fusion", parts=["sasrec-fused", "r2end-serve"], weight_grid=[0, 1, 4, 16])
    return cfg, train_fusion.run(cfg)
