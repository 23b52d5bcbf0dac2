"""Where benchmarks write: bench/results/<name>.json and <name>.md, each JSON with its provenance."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from r2end_core import storage

FOLDER = Path(__file__).parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {platform.processor() or 'cpu'}"


def command() -> str:
    """The command line that runs this benchmark, as typed."""
    module = getattr(sys.modules["__main__"].__spec__, "name", None) or sys.argv[0]
    return " ".join(["python -m", module, *sys.argv[1:]])


def provenance(config: dict | None) -> dict:
    """What re-makes a result: the code's commit (and whether the tree had uncommitted changes outside
    the results folder, which a benchmark writes into before its JSON), the command, and a digest of the
    config it ran with."""
    root = Path(__file__).parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    # a results folder elsewhere (a test's) holds nothing of the tree
    excluded = [f":(exclude){FOLDER.relative_to(root)}"] if FOLDER.is_relative_to(root) else []
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)),
        "command": command(),
        "config_digest": storage.digest(config) if config is not None else None,
    }


def write(name: str, result: dict, markdown: str, config: dict | None = None) -> None:
    """Write the JSON result and the Markdown table, each with ``provenance(config)``, and print the table."""
    FOLDER.mkdir(exist_ok=True)
    made = provenance(config)
    result = {**result, "provenance": made}
    markdown = markdown.rstrip("\n") + (
        f"\n\nMade by `{made['command']}` at commit {made['commit'][:10]}"
        + (" with uncommitted changes" if made["uncommitted_changes"] else "")
        + (f", config digest {made['config_digest']}" if made["config_digest"] else "")
        + ".\n"
    )
    (FOLDER / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (FOLDER / f"{name}.md").write_text(markdown)
    print(markdown)
