"""The one interface every trained recommender implements, and the versioned folder it lives in.

A model turns a batch of users' histories into user vectors and holds one vector per catalogue item;
an item's score for a user is their inner product (``similarity`` says whether the vectors are unit
length, so the score is a cosine). Evaluation, the benchmarks, the item index and the Serve app use
nothing else::

    model = models.load(layout, "r2end")                 # the latest version of models/r2end/
    users = model.user_vectors(Histories(item_ids=[["B000052WYN", "B004Z40048"]], texts=[text]))
    scores = users @ model.item_vectors().T              # [users, items], items in model.item_ids order

A version folder (``models/<name>/<version>/``) holds ``manifest.json`` (``ModelManifest``: the kind,
its model arguments, what serving must reproduce, and what it was trained from), the kind's weights,
``items.parquet`` (the item order), and, once evaluated, ``metrics.json`` and ``ranks.parquet``.
Versions are named by their content; ``models/<name>/latest.json`` points to the one saved last.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from r2end_core import storage
from r2end_core.config import HistoryRule
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout

MANIFEST_FILE = "manifest.json"


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # the model family (a key of models.KINDS)
    name: str
    version: str = ""  # set when saved: a digest of everything below and of the weight files
    args: dict[str, Any]  # the kind's model arguments (what rebuilds it)
    reads: Literal["item_ids", "text", "item_ids+text"]  # what user_vectors needs in Histories
    similarity: Literal["dot", "cosine"]  # cosine: the vectors are unit length
    history: HistoryRule  # how a history of ids is cut (and, for text models, written) as in training
    text_encoder: str | None = None  # the user tower's text encoder: under the storage path, or bundled:<name>
    item_encoder: str | None = None  # what embeds a new item's metadata text (text models)
    max_seq_length: int | None = None  # tokens the text encoders read
    items: int
    inputs: dict[str, str] = {}  # digests of what it was trained from
    files: dict[str, str] = {}  # each file of the version (path inside it) -> its sha256, checked on load


class Recommender(Protocol):
    manifest: ModelManifest
    item_ids: list[str]  # the rows of item_vectors()

    def user_vectors(self, histories: Histories) -> np.ndarray:
        """``[len(histories), dim]`` float32 user vectors."""

    def item_vectors(self) -> np.ndarray:
        """``[len(item_ids), dim]`` float32 item vectors."""

    def new_item_vectors(self, metadata_texts: list[str]) -> np.ndarray:
        """Vectors for items the model never saw, from their metadata text M_i (or a ValueError saying why
        this kind cannot)."""


IN_VERSION = "./"  # a manifest path that starts so names a file or folder inside the model's own version


def model_path(path: str, layout: Layout, manifest: ModelManifest | None = None) -> str:
    """A manifest's encoder path: inside ``manifest``'s version folder (``./encoder``), bundled names, URIs and
    absolute paths as they are, the rest under the storage path."""
    if path.startswith(IN_VERSION):
        if manifest is None or not manifest.version:
            raise ValueError(f"{path} is inside a saved model version: give its manifest")
        return layout.model_version(manifest.name, manifest.version, path.removeprefix(IN_VERSION))
    if path.startswith("bundled:") or storage.is_uri(path) or path.startswith("/"):
        return path
    return layout.path(path)


def stored_path(path: str | None, manifest: ModelManifest) -> str | None:
    """A manifest's path as another model names it: one inside ``manifest``'s version becomes the version
    folder's path under the storage path (``models/<name>/<version>/...``).

    >>> m = ModelManifest(kind="r2end", name="r2end", version="abc", args={}, reads="text", similarity="cosine",
    ...                   history={}, items=1)
    >>> stored_path("./encoder", m), stored_path("bundled:all-minilm-l6-v2", m)
    ('models/r2end/abc/encoder', 'bundled:all-minilm-l6-v2')
    """
    if path is None or not path.startswith(IN_VERSION):
        return path
    return f"models/{manifest.name}/{manifest.version}/{path.removeprefix(IN_VERSION)}"


def save(layout: Layout, manifest: ModelManifest, write_files: Callable[[str], None]) -> ModelManifest:
    """Write a model's files (``write_files(local folder)``) and manifest as a new version; returns the
    manifest with its version and its files' sha256. The same content gives the same version, which is then left
    as it is (with the metrics recorded for it) unless its files no longer match its manifest. The manifest is
    written last, in one step: a version without one (a writer killed mid-copy) is not a version, and the next
    save of that content writes its files again, as it does a damaged one's (after removing its manifest; the
    metrics recorded beside them stay); ``latest.json`` moves after it."""
    with tempfile.TemporaryDirectory() as folder:
        write_files(folder)
        files = storage.folder_sha256(folder)
        version = storage.digest({**manifest.model_dump(mode="json", exclude={"version", "files"}), "files": files})
        manifest = manifest.model_copy(update={"version": version, "files": files})
        saved = layout.model_version(manifest.name, version, MANIFEST_FILE)
        folder_saved = layout.model_version(manifest.name, version)
        if not storage.exists(saved) or storage.damaged_file(folder_saved, files):  # else: saved, metrics and all
            if storage.exists(saved):  # damaged: not a version while its files are written again
                storage.delete_file(saved)
            storage.copy_folder(folder, folder_saved, replace=False)  # the same names: a half copy is overwritten
            storage.write_json(manifest.model_dump(mode="json"), saved)
    storage.write_json({"version": version}, layout.model_latest(manifest.name))
    return manifest


def verify(layout: Layout, manifest: ModelManifest) -> None:
    """Every file of a version has the sha256 its manifest recorded, or ``storage.DamagedVersionError`` (also
    for a version saved before manifests recorded their files)."""
    storage.check_files(
        layout.model_version(manifest.name, manifest.version),
        manifest.files,
        f"model {manifest.name} version {manifest.version}",
        "save it again (train, or re-run the stage): that writes it whole",
    )


def resolve_version(layout: Layout, name: str, version: str = "latest") -> str:
    """``"latest"`` -> the version saved last; any other version must exist."""
    if version == "latest":
        if not storage.exists(layout.model_latest(name)):
            raise FileNotFoundError(
                f"no model '{name}' under {layout.path('models')}: train it first (ray_jobs.train_sasrec for "
                "SASRec, ray_jobs.project for R2END; the name is the stage's run_name)"
            )
        version = storage.read_json(layout.model_latest(name))["version"]
    if not storage.exists(layout.model_version(name, version, MANIFEST_FILE)):
        raise FileNotFoundError(f"model '{name}' has no version '{version}' under {layout.model(name)}")
    return version


def read_manifest(layout: Layout, name: str, version: str = "latest") -> ModelManifest:
    path = layout.model_version(name, resolve_version(layout, name, version), MANIFEST_FILE)
    return ModelManifest.model_validate(storage.read_json(path))
