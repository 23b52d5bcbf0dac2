"""R2END behind the recommender interface, on a real catalogue slice with the real MiniLM: user encoders,
the projection, masking, saving and loading, new items."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from r2end_core import models, schemas, storage
from r2end_core.config import HistoryRule, R2endArgs
from r2end_core.data.histories import Histories
from r2end_core.data.items import UnknownItemsError
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models.r2end import recommender
from r2end_core.models.r2end.projection import Projection
from r2end_core.text import encoders
from tests.conftest import catalogue_slice

MINILM = "bundled:all-minilm-l6-v2"


def item_table(items: pa.Table, encode) -> pa.Table:
    return pa.table(
        {"item_id": items["item_id"], "embedding": schemas.vector_column(encode(items["metadata_text"].to_pylist()))}
    )


def r2end(items: pa.Table, encode, args: R2endArgs, projection=None, **kwargs) -> recommender.R2endRecommender:
    text_encoder = None if args.user_encoder == "item_mean" else MINILM
    manifest = recommender.manifest("r2end-test", args, text_encoder, MINILM, 128, HistoryRule(), items.num_rows, {})
    return recommender.R2endRecommender(manifest, item_table(items, encode), projection, **kwargs)


def small_catalogue(
    users: pa.Table, items: pa.Table, n_users: int = 30, others: int = 300
) -> tuple[pa.Table, pa.Table]:
    """The first ``n_users`` users and a catalogue of their items plus the first ``others`` (re-indexed)."""
    users = users.slice(0, n_users)
    items = catalogue_slice(items, others, sorted({i for s in users.column("sequence").to_pylist() for i in s}))
    return users, items.set_column(
        items.column_names.index("item_index"), "item_index", pa.array(np.arange(items.num_rows), pa.int32())
    )


def test_item_mean_is_the_cosine_of_the_mean_of_the_kept_history_items():
    items = pa.table({"item_id": ["a", "b", "c"], "metadata_text": ["a", "b", "c"]})
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
    model = r2end(
        items,
        lambda texts: np.array([vectors[t] for t in texts], dtype=np.float32),
        R2endArgs(user_encoder="item_mean", use_projection=False),
    )
    day = 86_400
    # "a" falls outside the 60-day window before "at": only "b" is kept.
    users = model.user_vectors(Histories([["a", "b"], ["a", "b"]], [[0, 100 * day], None], [101 * day, None]))
    assert np.allclose(users, [[0.0, 1.0], [0.7071, 0.7071]], atol=1e-4)
    assert np.allclose(users @ model.item_vectors().T, [[0.0, 1.0, 0.8], [0.7071, 0.7071, 0.9899]], atol=1e-4)
    with pytest.raises(UnknownItemsError):
        model.user_vectors(Histories([["z"]]))


def test_text_users_and_masked_history_through_evaluation(prepared_tables, minilm_encode):
    users, items = small_catalogue(*prepared_tables)
    model = r2end(
        items,
        minilm_encode,
        R2endArgs(user_encoder="encoder", use_projection=False),
        embed_users=lambda h: minilm_encode(h.texts),
    )
    masked, unmasked = (evaluate(model, EvalSet.build(users, items, Split.VALID, mask)) for mask in (True, False))
    assert masked.metrics["users"] == users.num_rows and 0 < masked.metrics["hr@20"] <= 1
    assert (masked.ranks <= unmasked.ranks).all()  # masking only removes items from above the target
    with pytest.raises(ValueError, match="reads history texts"):
        model.user_vectors(Histories([["x"]]))


def test_saved_with_a_projection_loads_and_embeds_new_items(tmp_path, prepared_tables, minilm_encode):
    users, items = small_catalogue(*prepared_tables)
    torch.manual_seed(0)
    layout, f = Layout(str(tmp_path)), Projection(384, 16)
    model = r2end(items, minilm_encode, R2endArgs(user_encoder="encoder", dim=16), f, layout=layout)
    model.manifest = models.save(layout, model.manifest, model.write_files)
    loaded = models.load(layout, "r2end-test")
    assert loaded.manifest.reads == "text" and loaded.manifest.similarity == "cosine"
    history = Histories.of_split(users.slice(0, 3), Split.TEST)
    assert np.allclose(loaded.user_vectors(history), model.user_vectors(history), atol=1e-5)
    assert np.allclose(np.linalg.norm(loaded.item_vectors(), axis=1), 1, atol=1e-5)
    # A new item with an item's metadata text lands where that item is.
    twin = items.column("metadata_text")[5].as_py()
    assert np.allclose(loaded.new_item_vectors([twin])[0], loaded.item_vectors()[5], atol=1e-5)


def test_a_student_replaced_since_training_began_is_not_saved(tmp_path, prepared_tables, minilm_encode):
    """A version holds a copy of the distilled student it was trained with: when the student's folder changed
    meanwhile (the next distillation under the same run name), nothing is saved; as trained with, it is copied."""
    users, items = small_catalogue(*prepared_tables)
    layout = Layout(str(tmp_path))
    student = layout.student("s", "model")
    encoders.load_encoder(MINILM).save(student)
    model = r2end(items, minilm_encode, R2endArgs(user_encoder="encoder", use_projection=False), layout=layout)
    manifest, encoder_from = recommender.packed(
        model.manifest.model_copy(update={"text_encoder": "students/s/model"}), layout
    )
    trained_with = storage.folder_sha256(encoder_from)
    with open(os.path.join(student, "modules.json"), "a") as changed:
        changed.write(" ")
    with pytest.raises(storage.DamagedVersionError, match="modules.json is not the file this model was trained with"):
        models.save(layout, manifest, lambda folder: model.write_files(folder, encoder_from, trained_with))
    assert not os.path.exists(layout.model_latest(manifest.name)) and not os.path.exists(layout.path("models"))
    trained_with = storage.folder_sha256(encoder_from)
    saved = models.save(layout, manifest, lambda folder: model.write_files(folder, encoder_from, trained_with))
    assert {
        name.removeprefix("encoder/"): digest for name, digest in saved.files.items() if name.startswith("encoder/")
    } == trained_with
