"""What the encoder is given: item and target texts built from real Beauty rows and real teacher outputs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from r2end_core import artifacts, embeddings
from r2end_core.generation import output_schema


def outputs(kind: str, rows: list[dict]) -> pa.Table:
    schema = output_schema(kind)
    base = {"prompt_version": "v", "model": "m", "prompt_tokens": 1, "output_tokens": 1, "finish_reason": "stop",
            "truncated_to_words": False, "generated_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    return pa.Table.from_pylist([{**base, "kind": kind, "predicted_item": None, **r} for r in rows], schema=schema)


def test_item_texts_put_metadata_first_and_count_descriptions(prepared_tables):
    _, items = prepared_tables
    first = items.column("item_id")[0].as_py()
    described = outputs("item", [{"item_id": first, "text": "Users who prefer gentle soaps.", "error": None}])
    texts, has = embeddings.item_texts(items, described)
    assert texts[0] == items.column("metadata_text")[0].as_py() + "\nUsers who prefer gentle soaps."
    assert texts[1:] == items.column("metadata_text").to_pylist()[1:]
    assert has.sum() == 1 and has[0]


def test_target_texts_skip_failed_rows_and_use_the_training_target(prepared_tables):
    users, items = prepared_tables
    u0, u1 = users.column("user_id").to_pylist()[:2]
    reasoning = outputs("oracle", [{"user_id": u0, "text": "Likes lip care.", "error": None},
                                   {"user_id": u1, "text": None, "error": "empty generation"}])
    ids, texts = embeddings.target_texts("oracle", users, items, reasoning)
    target = users.column("train_target")[0].as_py()
    metadata = dict(zip(items.column("item_id").to_pylist(), items.column("metadata_text").to_pylist()))
    assert ids == [u0] and texts == [metadata[target] + "\nLikes lip care."]
    assert embeddings.target_texts("metadata", users, items, reasoning) == ([u0], [metadata[target]])


def test_missing_teacher_outputs_and_unknown_users_are_named(prepared_tables):
    users, items = prepared_tables
    with pytest.raises(ValueError, match="needs the teacher's oracle outputs"):
        embeddings.target_texts("metadata", users, items, None)
    stray = outputs("oracle", [{"user_id": "no-such-user", "text": "x", "error": None}])
    with pytest.raises(ValueError, match="1 users that are not in the prepared users.*no-such-user"):
        embeddings.check_users_known(stray, users, "teacher_outputs/x (oracle)")


def test_embedding_columns_round_trip():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(embeddings.to_matrix(embeddings.embedding_column(vectors)), vectors)


def test_a_missing_embed_stage_output_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="targets.parquet not found: run the embed stage"):
        artifacts.read_embeddings(str(tmp_path), "targets.parquet")


def test_teacher_output_folders_are_joined_and_a_shared_key_is_named(tmp_path):
    import pyarrow.parquet as pq

    committed, extension = tmp_path / "committed", tmp_path / "extension"
    for folder, users in ((committed, ["u1", "u2"]), (extension, ["u3"])):
        folder.mkdir()
        pq.write_table(outputs("oracle", [{"user_id": u, "text": "x", "error": None} for u in users]), folder / "oracle.parquet")
    pq.write_table(outputs("item", [{"item_id": "i1", "text": "Users who prefer x.", "error": None}]), committed / "items.parquet")
    found = embeddings.read_teacher_outputs([str(committed), str(extension)], str(tmp_path))
    assert found["oracle"]["user_id"].to_pylist() == ["u1", "u2", "u3"] and found["item"].num_rows == 1
    assert found["unguided"] is None and found["grounding"] is None

    pq.write_table(outputs("oracle", [{"user_id": "u2", "text": "y", "error": None}]), extension / "oracle.parquet")
    with pytest.raises(ValueError, match=f"oracle.parquet: user_id 'u2' is in both {committed} and {extension}"):
        embeddings.read_teacher_outputs([str(committed), str(extension)], str(tmp_path))


def test_teachers_compared_on_the_same_users_with_one_teachers_item_descriptions(tmp_path):
    import pyarrow.parquet as pq

    from r2end_core.config import TeacherOutputsFolder

    small, strong = tmp_path / "small", tmp_path / "strong"
    for folder in (small, strong):
        folder.mkdir()
    pq.write_table(outputs("oracle", [{"user_id": u, "text": "x", "error": None} for u in ("u1", "u2", "u3")]),
                   small / "oracle.parquet")
    pq.write_table(outputs("item", [{"item_id": "i1", "text": "Users who prefer x.", "error": None}]), small / "items.parquet")
    pq.write_table(outputs("oracle", [{"user_id": "u2", "text": "y", "error": None},
                                      {"user_id": "u3", "text": None, "error": "empty generation"}]), strong / "oracle.parquet")

    smalls = embeddings.read_teacher_outputs(
        [TeacherOutputsFolder(folder=str(small), same_users_as=str(strong))], str(tmp_path))
    strongs = embeddings.read_teacher_outputs(
        [TeacherOutputsFolder(folder=str(strong), same_users_as=str(small)),
         TeacherOutputsFolder(folder=str(small), kinds=["item"])], str(tmp_path))
    assert smalls["oracle"]["user_id"].to_pylist() == ["u2"]  # u3 failed with the strong teacher
    assert smalls["outside_same_users"] == {"oracle": 2} and smalls["item"].num_rows == 1
    assert strongs["oracle"]["text"].to_pylist() == ["y", None] and strongs["outside_same_users"] == {"oracle": 0}
    assert strongs["item"]["text"].to_pylist() == ["Users who prefer x."]

    with pytest.raises(ValueError, match=f"{strong}: no item teacher outputs there"):
        embeddings.read_teacher_outputs([TeacherOutputsFolder(folder=str(strong), kinds=["item"])], str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path / 'typo'}: no teacher outputs there"):
        embeddings.read_teacher_outputs([str(small), str(tmp_path / "typo")], str(tmp_path))
    pq.write_table(outputs("unguided", [{"user_id": "u2", "text": "z", "error": None}]), strong / "unguided.parquet")
    with pytest.raises(ValueError, match=f"{small}/unguided.parquet not found: same_users_as"):
        embeddings.read_teacher_outputs([TeacherOutputsFolder(folder=str(strong), same_users_as=str(small))], str(tmp_path))
