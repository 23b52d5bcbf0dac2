import pytest

from r2end_core.config import ConfigError, load_config

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_sample_config_loads_with_overrides():
    cfg = load_config(REPO / "configs/beauty-sample.yaml", ["sasrec.max_epochs=3", "prepare.sample_users=null"])
    assert cfg.sasrec.max_epochs == 3
    assert cfg.prepare.sample_users is None
    assert cfg.sasrec.hidden_size == 64  # default kept


def test_every_shipped_config_is_valid():
    for path in (REPO / "configs").glob("*.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sasrec.hiden_size=32"], "hiden_size"),  # misspelt key
        (["sasrec.max_epochs=zero"], "max_epochs"),  # wrong type
        (["prepare.min_interactions=2"], "min_interactions"),  # out of range
        (["sasrec.max_epochs"], "section.field=value"),  # malformed override
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/beauty-sample.yaml", overrides)


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("storage_path: x\nprepare: {dataset_path: y}\nserving: {}\n")
    with pytest.raises(ConfigError, match="serving"):
        load_config(path)


def test_one_teacher_output_folder_or_several():
    one = load_config(REPO / "configs/beauty-sample.yaml", ["embed.teacher_outputs=teacher_outputs/beauty-cpu"])
    two = load_config(REPO / "configs/beauty-sample.yaml", ["embed.teacher_outputs=[teacher_outputs/a, teacher_outputs/b]"])
    part = load_config(REPO / "configs/beauty-sample.yaml",
                       ["embed.teacher_outputs=[to/qwen, {folder: to/smol, kinds: [item]}]"])
    assert [s.folder for s in one.embed.teacher_outputs] == ["teacher_outputs/beauty-cpu"]
    assert [str(s) for s in two.embed.teacher_outputs] == ["teacher_outputs/a", "teacher_outputs/b"]
    assert [str(s) for s in part.embed.teacher_outputs] == ["to/qwen", "to/smol [item]"]
    with pytest.raises(ConfigError, match="kinds"):
        load_config(REPO / "configs/beauty-sample.yaml", ["embed.teacher_outputs=[{folder: a, kinds: [items]}]"])
