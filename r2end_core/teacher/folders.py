"""Exported teacher-output folders (``teacher_outputs/<name>/``, written by ``bench.teacher_outputs``):
``oracle.parquet``, ``unguided.parquet``, ``items.parquet`` and ``unguided_grounding.parquet``, each
optional. Several folders are joined (a committed sample and the folders that extend it, or one
teacher's reasoning and another's item descriptions); a key in two of them is an error.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from r2end_core import storage
from r2end_core.config import TeacherOutputsFolder
from r2end_core.layout import Layout
from r2end_core.teacher.kinds import GROUNDING_FILE, KINDS
from r2end_core.teacher.outputs import read_generated, succeeded

#: What a folder may hold: a kind's outputs, or "grounding" (the unguided answers' rejection sampling).
FILES = {**{name: kind.export_file for name, kind in KINDS.items()}, "grounding": GROUNDING_FILE}


def read_teacher_outputs(sources: list[TeacherOutputsFolder | str] | None, layout: Layout) -> dict:
    """``{kind name, "grounding"}`` -> table, or None where there is none, and ``"outside_same_users"``:
    kind -> rows left out by a source's ``same_users_as``.

    ``sources``: exported folders (paths, or ``TeacherOutputsFolder`` to read some kinds, some users or a
    sample of one), whose rows are joined; rows a source leaves out are counted in ``outside_same_users``.
    None reads the storage path's ``generated/`` (and its grounding, if any).
    """
    if sources is None:
        found = {name: read_generated(layout, kind) for name, kind in KINDS.items()}
        grounding = layout.embeddings(GROUNDING_FILE)
        found["grounding"] = storage.read_table(grounding) if storage.exists(grounding) else None
        return {**found, "outside_same_users": {}}
    sources = [TeacherOutputsFolder(folder=s) if isinstance(s, str) else s for s in sources]
    for source in sources:  # a mistyped folder or kind would otherwise just leave its rows out
        held = {name for name, file in FILES.items() if storage.exists(storage.join(source.folder, file))}
        lacking = [k for k in source.kinds or [] if k not in held]
        if lacking or not held - {"grounding"}:
            raise ValueError(
                f"{source.folder}: no {' or '.join(lacking) + ' ' if lacking else ''}teacher outputs there "
                f"(a folder holds {', '.join(FILES.values())} as bench.teacher_outputs exports them)"
            )
    found, outside = {}, {}
    for name, file in FILES.items():
        answers = KINDS["unguided" if name == "grounding" else name]  # grounding goes with its answers
        parts = []
        for source in sources:
            path = storage.join(source.folder, file)
            if (source.kinds is not None and answers.name not in source.kinds) or not storage.exists(path):
                continue
            table = storage.read_table(path)
            table = table if name == "grounding" else table.cast(answers.schema)
            if source.same_users_as and answers.about == "users":
                kept = table.filter(pc.is_in(table["user_id"], _users_with_text(source.same_users_as, answers.name)))
                outside[name] = outside.get(name, 0) + table.num_rows - kept.num_rows
                table = kept
            table, left_out = _sampled(table, source, answers, name)
            if left_out:
                outside[name] = outside.get(name, 0) + left_out
            parts.append((str(source), table))
        _check_no_shared_keys(parts, "user_id" if name == "grounding" else answers.key_column, file)
        found[name] = pa.concat_tables([table for _, table in parts]) if parts else None
    return {**found, "outside_same_users": outside}


def _sampled(table: pa.Table, source: TeacherOutputsFolder, answers, name: str) -> tuple[pa.Table, int]:
    """(the rows of ``source``'s sample, how many were left out). The sample: the keys sorted, shuffled by
    ``sample_seed``, the first N; so a smaller sample of the same folder lies inside a larger one."""
    size = source.sample_items if answers.about == "items" else source.sample_users
    if size is None:
        return table, 0
    key = "user_id" if name == "grounding" else answers.key_column
    keys = sorted(storage.read_table(storage.join(source.folder, answers.export_file))[key].to_pylist())
    chosen = [keys[i] for i in np.random.default_rng(source.sample_seed).permutation(len(keys))[:size]]
    kept = table.filter(pc.is_in(table[key], pa.array(chosen, pa.string())))
    return kept, table.num_rows - kept.num_rows


def _users_with_text(folder: str, kind_name: str) -> pa.Array:
    kind = KINDS[kind_name]
    path = storage.join(folder, kind.export_file)
    if not storage.exists(path):
        raise ValueError(
            f"{path} not found: same_users_as keeps the {kind.name} answers of the users that folder "
            f"has {kind.name} answers for, and it has none"
        )
    return succeeded(storage.read_table(path).cast(kind.schema))["user_id"].combine_chunks()


def _check_no_shared_keys(parts: list[tuple[str, pa.Table]], key: str, file: str) -> None:
    seen: dict[str, str] = {}
    for source, table in parts:
        for k in table.column(key).to_pylist():
            if k in seen:
                raise ValueError(
                    f"{file}: {key} {k!r} is in both {seen[k]} and {source}; "
                    "teacher-output folders that are joined must hold different keys"
                )
            seen[k] = source


def check_users_known(outputs: pa.Table, users: pa.Table, source: str) -> None:
    """Outputs for users the prepared data does not hold mean the two come from different samples."""
    known = set(users.column("user_id").to_pylist())
    unknown = [u for u in outputs.column("user_id").to_pylist() if u not in known]
    if unknown:
        raise ValueError(
            f"{source}: outputs for {len(unknown)} users that are not in the prepared users, e.g. {unknown[:3]}; "
            "the teacher outputs and the prepared data come from different samples or datasets"
        )
