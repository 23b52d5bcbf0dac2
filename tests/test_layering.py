"""The layers stay apart: the library imports no Ray and nothing above it, a stage launcher imports no other
launcher (only the pipeline composes them), and the Serve app imports no launcher."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: ray_jobs modules that wire Ray for the launchers; every other module there is a launcher.
HELPERS = {"runtime", "ray_train", "ray_data", "sequential", "ranking"}
COMPOSER = "pipeline"


def imports(path: Path) -> set[str]:
    """The modules a file imports (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_library_imports_no_ray_and_nothing_above_it():
    for path in (REPO / "r2end_core").rglob("*.py"):
        wrong = {n for n in imports(path) if any(within(n, p) for p in ("ray", "ray_jobs", "serve_app", "bench"))}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_no_launcher_imports_another():
    launchers = {p.stem for p in (REPO / "ray_jobs").glob("*.py")} - HELPERS - {"__init__", COMPOSER}
    for path in (REPO / "ray_jobs").glob("*.py"):
        if path.stem == COMPOSER:
            continue
        others = {n for n in imports(path) if any(within(n, f"ray_jobs.{s}") for s in launchers - {path.stem})}
        assert not others, f"{path.relative_to(REPO)} imports the launchers {sorted(others)}"


def test_the_serve_app_imports_no_launcher():
    for path in (REPO / "serve_app").glob("*.py"):
        assert not {n for n in imports(path) if within(n, "ray_jobs")}, f"{path.relative_to(REPO)} imports ray_jobs"
