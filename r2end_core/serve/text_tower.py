"""The served model's text tower on the configured CPU backend (``serve.cpu_encoder``).

    model = with_cpu_encoder(models.load(layout, "r2end"), layout, "onnx-int8", threads=2)
    model.user_vectors(histories)          # history texts encoded by ONNX Runtime, int8

A text model (R2END) and a fusion's text parts encode history texts through the backend; an ID model
(SASRec, its students) has no text tower and is served as it is.
"""

from __future__ import annotations

from r2end_core import storage
from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest, Recommender, model_path
from r2end_core.models.fusion import FusionRecommender
from r2end_core.models.r2end.recommender import R2endRecommender
from r2end_core.text import onnx_encoder

BACKENDS = ("torch", "onnx-fp32", "onnx-int8")


def text_towers(model: Recommender) -> list[R2endRecommender]:
    """The models inside ``model`` that encode history texts with a text encoder."""
    if isinstance(model, FusionRecommender):
        return [tower for part in model.parts for tower in text_towers(part)]
    return [model] if isinstance(model, R2endRecommender) and model.manifest.text_encoder else []


def encoder_weights(manifest: ModelManifest) -> str:
    """What names a text tower's encoder weights in the ONNX export cache: the sha256 of the encoder files its
    version holds (so two versions share an export only when their weights are the same bytes), else the
    encoder it names (a bundled one).

    >>> from types import SimpleNamespace as Manifest
    >>> held = Manifest(text_encoder="./encoder", files={"encoder/w.bin": "ab12", "projection.pt": "cd34"})
    >>> encoder_weights(held) == encoder_weights(Manifest(text_encoder="./encoder", files={"encoder/w.bin": "ab12"}))
    True
    >>> encoder_weights(Manifest(text_encoder="bundled:all-minilm-l6-v2", files={}))
    'bundled:all-minilm-l6-v2'
    """
    held = {path: digest for path, digest in manifest.files.items() if path.startswith("encoder/")}
    return storage.digest(held) if held else manifest.text_encoder


def with_cpu_encoder(model: Recommender, layout: Layout, backend: str, threads: int) -> Recommender:
    """``model`` with its text towers on ``backend`` (one of ``BACKENDS``; ``torch`` leaves it as it is)."""
    if backend not in BACKENDS:
        raise ValueError(f"text encoder backend {backend!r}: expected one of {BACKENDS}")
    if backend == "torch":
        return model
    for tower in text_towers(model):
        manifest = tower.manifest
        source = model_path(manifest.text_encoder, layout, manifest)
        precision = backend.removeprefix("onnx-")
        weights = encoder_weights(manifest)
        encoder = onnx_encoder.load(source, weights, manifest.max_seq_length, "end", precision, threads)
        tower.embed_users = lambda histories, encoder=encoder: encoder.encode(histories.texts)
    return model
