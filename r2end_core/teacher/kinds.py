"""The kinds of teacher output: what each is about, what it is keyed by, where it is kept, how it is asked.

A new kind is one entry here (and its prompt in ``prompts``)::

    >>> KINDS["oracle"].key_column, KINDS["item"].key_column, KINDS["item"].export_file
    ('user_id', 'item_id', 'items.parquet')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from r2end_core import schemas
from r2end_core.teacher import prompts


@dataclass(frozen=True)
class OutputKind:
    name: str
    about: str  # "users" or "items": the prepared table its keys come from
    folder: str  # under <storage>/generated/
    export_file: str  # in an exported teacher-outputs folder (teacher_outputs/<name>/)
    #: The prompt for one row of ``about``'s table; ``metadata`` maps item ids to their metadata text.
    prompt: Callable[[dict, dict[str, str], int], str]
    names_an_item: bool = False  # the answer ends by naming the item it expects (kept as predicted_item)

    @property
    def key_column(self) -> str:
        return "user_id" if self.about == "users" else "item_id"

    @property
    def schema(self) -> pa.Schema:
        return schemas.USER_OUTPUTS if self.about == "users" else schemas.ITEM_OUTPUTS

    @property
    def prompt_version(self) -> str:
        return prompts.PROMPT_VERSIONS[self.name]


def _oracle(row: dict, metadata: dict[str, str], words: int) -> str:
    return prompts.oracle_prompt(row["train_history_text"], metadata[row["train_target"]], words)


def _unguided(row: dict, metadata: dict[str, str], words: int) -> str:
    return prompts.unguided_prompt(row["train_history_text"], words)


def _profile(row: dict, metadata: dict[str, str], words: int) -> str:
    # the history just before the validation target: the training part's most recent items
    return prompts.profile_prompt(row["valid_history_text"], words)


def _item(row: dict, metadata: dict[str, str], words: int) -> str:
    return prompts.item_prompt(row["metadata_text"], row["buyer_context_text"], max_words=words)


KINDS = {
    kind.name: kind
    for kind in (
        OutputKind("oracle", "users", "oracle", "oracle.parquet", _oracle),
        OutputKind("unguided", "users", "unguided", "unguided.parquet", _unguided, names_an_item=True),
        OutputKind("profile", "users", "profile", "profile.parquet", _profile),
        OutputKind("item", "items", "items", "items.parquet", _item),
    )
}

#: In an exported folder beside the unguided answers: their rejection sampling (schemas.GROUNDING).
GROUNDING_FILE = "unguided_grounding.parquet"


def kind(name: str) -> OutputKind:
    """The kind called ``name``, or an error listing the known ones."""
    if name not in KINDS:
        raise ValueError(f"unknown teacher-output kind '{name}'; known: {sorted(KINDS)}")
    return KINDS[name]
