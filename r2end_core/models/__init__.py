"""Trained recommenders behind one interface (``base.Recommender``), each in a versioned folder.

A new model is one module here (its torch module, its loss and a ``*Recommender`` with ``write_files``
and ``load``), one entry in ``KINDS``, a launcher in ``ray_jobs/`` and a config section.
"""

from __future__ import annotations

from r2end_core.layout import Layout
from r2end_core.models.base import ModelManifest, Recommender, read_manifest, save, verify
from r2end_core.models.fusion import FusionRecommender
from r2end_core.models.r2end.recommender import R2endRecommender
from r2end_core.models.sasrec import SasrecRecommender

#: manifest.kind -> the class that loads it
KINDS = {"sasrec": SasrecRecommender, "r2end": R2endRecommender, "fusion": FusionRecommender}

__all__ = ["KINDS", "ModelManifest", "Recommender", "load", "read_manifest", "save"]


def load(layout: Layout, name: str, version: str = "latest", device: str = "cpu") -> Recommender:
    """A trained model by name (its folder under ``models/``), at a version or the latest."""
    manifest = read_manifest(layout, name, version)
    verify(layout, manifest)
    if manifest.kind not in KINDS:
        raise ValueError(f"model {name} is of kind '{manifest.kind}', which this r2end does not know ({sorted(KINDS)})")
    return KINDS[manifest.kind].load(layout, manifest, device)
