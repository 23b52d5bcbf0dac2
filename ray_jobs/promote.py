"""Promote an index version to what is served, or roll back: the only way the served version changes.

    python -m ray_jobs.promote --config configs/beauty-sample.yaml --version flat-449988b201   # or: latest
    python -m ray_jobs.promote --config configs/beauty-sample.yaml --rollback
    python -m ray_jobs.promote --config configs/beauty-sample.yaml                            # the record

Moves the alias ``--alias`` (``live``, which Serve deploys by default) under the index's lease and records who
and when (``index/aliases/<alias>.json``). ``python -m ray_jobs.serve`` then rolls the running app out to it:
Serve starts the new replicas before it stops the old ones. (``serve deploy`` of an unchanged config file does
not: Serve rebuilds an app only when its arguments change.)
"""

from __future__ import annotations

from r2end_core.config import PipelineConfig
from r2end_core.layout import Layout
from r2end_core.serve import aliases, index
from r2end_core.summaries import AliasRecord
from ray_jobs.runtime import log, run_stage


def run(
    cfg: PipelineConfig, version: str | None = None, rollback: bool = False, alias: str = aliases.LIVE
) -> AliasRecord:
    layout = Layout(cfg.storage_path)
    with aliases.lease(layout):
        if rollback:
            record = aliases.rollback(layout, alias)
        elif version:
            record = aliases.promote(layout, index.resolve_version(layout, version), alias)
        else:
            record = aliases.read(layout, alias)
            if record is None:
                raise FileNotFoundError(
                    f"no index version promoted to '{alias}' under {layout.path('index')}: build one (ray_jobs.index) "
                    "and promote it (--version VERSION, or latest)"
                )
    last = record.moves[-1]
    log.info(
        f"index alias {alias} -> {record.version} ({last.action} by {last.by} at {last.at}; {len(record.moves)} moves)"
    )
    return record


def main(cfg: PipelineConfig, args) -> AliasRecord:
    return run(cfg, args.version, args.rollback, args.alias)


def arguments(parser) -> None:
    parser.add_argument("--version", help="the index version to promote (or latest: the one built last)")
    parser.add_argument("--rollback", action="store_true", help="back to the version promoted before")
    parser.add_argument("--alias", default=aliases.LIVE, help="the alias to move (default: live)")


if __name__ == "__main__":
    run_stage(__doc__, main, "promote", add_arguments=arguments)
