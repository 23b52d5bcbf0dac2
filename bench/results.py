"""Where benchmarks write: bench/results/<name>.json and <name>.md."""

from __future__ import annotations

import json
import platform
from pathlib import Path

FOLDER = Path(__file__).parent / "results"


def machine() -> str:
    return f"{platform.machine()}, {platform.processor() or 'cpu'}"


def write(name: str, result: dict, markdown: str) -> None:
    """Write the JSON result and the Markdown table, and print the table."""
    FOLDER.mkdir(exist_ok=True)
    (FOLDER / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (FOLDER / f"{name}.md").write_text(markdown)
    print(markdown)
