"""Configs: layered YAML files, --set overrides, model arguments apart, and every mistake named."""

from pathlib import Path

import pytest

from r2end_core.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs/beauty-sample.yaml"


def test_sample_config_loads_with_overrides():
    cfg = load_config(SAMPLE, ["sasrec.max_epochs=3", "prepare.sample_users=null", "sasrec.model.dropout=0.3"])
    assert cfg.sasrec.max_epochs == 3 and cfg.sasrec.model.dropout == 0.3
    assert cfg.prepare.sample_users is None
    assert cfg.sasrec.model.hidden_size == 64  # default kept
    assert cfg.generate.repetition_penalty == 1.1  # from base.yaml, which it extends


def test_every_shipped_config_is_valid():
    shipped = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if p.name != "base.yaml"]  # base: a layer only
    assert len(shipped) >= 5
    for path in shipped:
        load_config(path)


def test_layers_merge_section_by_section_and_later_ones_win(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "storage_path: s\nprepare: {dataset_path: d, sample_users: 10}\nsasrec: {model: {dropout: 0.2}}\n"
    )
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nprepare: {sample_users: 20}\n")
    (tmp_path / "more.yaml").write_text("sasrec: {model: {num_layers: 3}}\n")
    cfg = load_config([tmp_path / "run.yaml", tmp_path / "more.yaml"], ["prepare.sample_seed=5"])
    assert (
        cfg.prepare.sample_users,
        cfg.prepare.sample_seed,
        cfg.sasrec.model.dropout,
        cfg.sasrec.model.num_layers,
    ) == (20, 5, 0.2, 3)
    # Local paths come back absolute (relative to where the command runs); URIs stay as they are.
    assert Path(cfg.storage_path).is_absolute() and Path(cfg.prepare.dataset_path).is_absolute()
    assert load_config(tmp_path / "run.yaml", ["storage_path=s3://bucket/r2end"]).storage_path == "s3://bucket/r2end"


def test_a_loop_of_extends_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sasrec.model.hiden_size=32"], "hiden_size"),  # misspelt key
        (["sasrec.hidden_size=32"], "hidden_size"),  # a model argument outside the model block
        (["sasrec.max_epochs=zero"], "max_epochs"),  # wrong type
        (["prepare.min_interactions=2"], "min_interactions"),  # out of range
        (["sasrec.model.num_heads=3"], "not divisible by num_heads"),  # a model that cannot be built
        (["sasrec.num_workers=4", "sasrec.batch_size=2"], "a worker gets no users"),
        (["distill.num_workers=3"], "does not split over num_workers"),
        (["distill.min_improvement=0.01"], "it needs patience"),  # a stopping floor with no stopping rule
        (["project.model.user_encoder=students"], "user_encoder"),  # not a known kind
        (["generate.block_size=40"], "block_size"),  # not a KV-cache block vLLM can use
        (["sasrec.max_epochs"], "section.field=value"),  # malformed override
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SAMPLE, overrides)


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("storage_path: x\nprepare: {dataset_path: y}\nserving: {}\n")
    with pytest.raises(ConfigError, match="serving"):
        load_config(path)


def test_one_teacher_output_folder_or_several():
    one = load_config(SAMPLE, ["embed.teacher_outputs=teacher_outputs/beauty-cpu"])
    two = load_config(SAMPLE, ["embed.teacher_outputs=[teacher_outputs/a, teacher_outputs/b]"])
    part = load_config(SAMPLE, ["embed.teacher_outputs=[to/qwen, {folder: to/smol, kinds: [item]}]"])
    assert [s.folder for s in one.embed.teacher_outputs] == [str(REPO / "teacher_outputs/beauty-cpu")]
    assert [Path(str(s)).name for s in two.embed.teacher_outputs] == ["a", "b"]
    assert str(part.embed.teacher_outputs[1]).endswith("to/smol [item]")
    with pytest.raises(ConfigError, match="kinds"):
        load_config(SAMPLE, ["embed.teacher_outputs=[{folder: a, kinds: [items]}]"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_loads(path):
    cfg = load_config(path, ["storage_path=/s"] if path.name == "base.yaml" else [])  # the layer the others extend
    assert cfg.storage_path and cfg.prepare.dataset_path


def test_the_serve_config_files_args_are_the_apps():
    import yaml

    from serve_app.app import AppArgs

    deployed = yaml.safe_load((REPO / "serve_app/serve_config.yaml").read_text())
    args = AppArgs(**deployed["applications"][0]["args"])
    assert deployed["http_options"]["request_timeout_s"] == args.request_timeout_s
