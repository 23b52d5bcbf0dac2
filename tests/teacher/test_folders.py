"""Exported teacher-output folders: joined, read in part, and every mistake named."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from r2end_core.config import TeacherOutputsFolder
from r2end_core.layout import Layout
from r2end_core.teacher.folders import read_teacher_outputs
from tests.models.test_r2end_targets import outputs


def test_teacher_output_folders_are_joined_and_a_shared_key_is_named(tmp_path):
    committed, extension = tmp_path / "committed", tmp_path / "extension"
    for folder, users in ((committed, ["u1", "u2"]), (extension, ["u3"])):
        folder.mkdir()
        pq.write_table(
            outputs("oracle", [{"user_id": u, "text": "x", "error": None} for u in users]), folder / "oracle.parquet"
        )
    pq.write_table(
        outputs("item", [{"item_id": "i1", "text": "Users who prefer x.", "error": None}]), committed / "items.parquet"
    )
    found = read_teacher_outputs([str(committed), str(extension)], Layout(str(tmp_path)))
    assert found["oracle"]["user_id"].to_pylist() == ["u1", "u2", "u3"] and found["item"].num_rows == 1
    assert found["unguided"] is None and found["grounding"] is None

    pq.write_table(outputs("oracle", [{"user_id": "u2", "text": "y", "error": None}]), extension / "oracle.parquet")
    with pytest.raises(ValueError, match=f"oracle.parquet: user_id 'u2' is in both {committed} and {extension}"):
        read_teacher_outputs([str(committed), str(extension)], Layout(str(tmp_path)))


def test_teachers_compared_on_the_same_users_with_one_teachers_item_descriptions(tmp_path):
    small, strong = tmp_path / "small", tmp_path / "strong"
    for folder in (small, strong):
        folder.mkdir()
    pq.write_table(
        outputs("oracle", [{"user_id": u, "text": "x", "error": None} for u in ("u1", "u2", "u3")]),
        small / "oracle.parquet",
    )
    pq.write_table(
        outputs("item", [{"item_id": "i1", "text": "Users who prefer x.", "error": None}]), small / "items.parquet"
    )
    pq.write_table(
        outputs(
            "oracle",
            [
                {"user_id": "u2", "text": "y", "error": None},
                {"user_id": "u3", "text": None, "error": "empty generation"},
            ],
        ),
        strong / "oracle.parquet",
    )

    smalls = read_teacher_outputs(
        [TeacherOutputsFolder(folder=str(small), same_users_as=str(strong))], Layout(str(tmp_path))
    )
    strongs = read_teacher_outputs(
        [
            TeacherOutputsFolder(folder=str(strong), same_users_as=str(small)),
            TeacherOutputsFolder(folder=str(small), kinds=["item"]),
        ],
        Layout(str(tmp_path)),
    )
    assert smalls["oracle"]["user_id"].to_pylist() == ["u2"]  # u3 failed with the strong teacher
    assert smalls["outside_same_users"] == {"oracle": 2} and smalls["item"].num_rows == 1
    assert strongs["oracle"]["text"].to_pylist() == ["y", None] and strongs["outside_same_users"] == {"oracle": 0}
    assert strongs["item"]["text"].to_pylist() == ["Users who prefer x."]

    with pytest.raises(ValueError, match=f"{strong}: no item teacher outputs there"):
        read_teacher_outputs([TeacherOutputsFolder(folder=str(strong), kinds=["item"])], Layout(str(tmp_path)))
    with pytest.raises(ValueError, match=f"{tmp_path / 'typo'}: no teacher outputs there"):
        read_teacher_outputs([str(small), str(tmp_path / "typo")], Layout(str(tmp_path)))
    pq.write_table(outputs("unguided", [{"user_id": "u2", "text": "z", "error": None}]), strong / "unguided.parquet")
    with pytest.raises(ValueError, match=f"{small}/unguided.parquet not found: same_users_as"):
        read_teacher_outputs(
            [TeacherOutputsFolder(folder=str(strong), same_users_as=str(small))], Layout(str(tmp_path))
        )


def test_a_sample_of_a_folder_is_fixed_and_nested(tmp_path):
    folder = tmp_path / "all"
    folder.mkdir()
    users, items = [f"u{i}" for i in range(50)], [f"i{i}" for i in range(30)]
    pq.write_table(
        outputs("oracle", [{"user_id": u, "text": "x", "error": None} for u in users]), folder / "oracle.parquet"
    )
    pq.write_table(
        outputs("item", [{"item_id": i, "text": "d", "error": None} for i in items]), folder / "items.parquet"
    )

    def sample(**size) -> dict:
        return read_teacher_outputs([TeacherOutputsFolder(folder=str(folder), **size)], Layout(str(tmp_path)))

    small, large = sample(sample_users=10, sample_items=3), sample(sample_users=25)
    assert small["oracle"].num_rows == 10 and small["item"].num_rows == 3 and large["item"].num_rows == 30
    assert set(small["oracle"]["user_id"].to_pylist()) < set(large["oracle"]["user_id"].to_pylist())
    assert small["outside_same_users"] == {"oracle": 40, "item": 27}
    assert sample(sample_users=10)["oracle"].equals(small["oracle"])  # the same sample every time
    other = sample(sample_users=10, sample_seed=1)["oracle"]["user_id"].to_pylist()
    assert set(other) != set(small["oracle"]["user_id"].to_pylist())
