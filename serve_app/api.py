"""The HTTP API's request and response bodies (their field docs show in the OpenAPI page, /docs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _unicode(text: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer or reply can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"not valid Unicode text: a lone surrogate at character {err.start}") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
#: unix seconds from 1970 to the end of year 9999: the dates a history text can write
UnixSeconds = Annotated[int, Field(ge=0, le=253_402_300_799)]


class RecommendRequest(BaseModel):
    """A user's history, as item ids (oldest first) or as text, and how many items to return.

    ``{"history": ["B004Z40048", "B0043OYFKU"], "k": 10}`` or
    ``{"history_text": "1. Rose lip balm; brand: ...\\n2. ...", "k": 5}``
    """

    model_config = ConfigDict(extra="forbid")

    history: list[Text] | None = Field(
        None,
        description="Item ids the user bought, oldest first. A text model reads them as training did (its "
        "history rule: the 8 most recent within 60 days of `at` by default); a sequence model reads the latest ones.",
    )
    timestamps: list[UnixSeconds] | None = Field(
        None, description="Unix seconds, one per history item (optional; the items are ordered by them)."
    )
    at: UnixSeconds | None = Field(None, description="Prediction time, unix seconds (default: the last timestamp).")
    history_text: Text | None = Field(None, description="The history as text, instead of item ids (text models).")
    k: int = Field(10, description="How many items to return (1 to the server's max_k).")
    exclude_history: bool = Field(True, description="Leave the history's own items out of the results.")

    @model_validator(mode="after")
    def _one_history(self):
        if (self.history is None) == (self.history_text is None):
            raise ValueError("give exactly one of 'history' (item ids) or 'history_text'")
        if self.history is not None and not self.history:
            raise ValueError("'history' is empty: give at least one item id")
        if self.history_text is not None and not self.history_text.strip():
            raise ValueError("'history_text' is empty")
        if self.timestamps is not None:
            if self.history is None:
                raise ValueError("'timestamps' go with 'history' (item ids)")
            if len(self.timestamps) != len(self.history):
                raise ValueError(
                    f"'timestamps' has {len(self.timestamps)} values for {len(self.history)} history items"
                )
        if self.at is not None:
            if self.timestamps is None:
                raise ValueError("'at' needs 'timestamps'")
            if self.timestamps and self.at < max(self.timestamps):
                raise ValueError(
                    f"'at' ({self.at}) is before the latest history timestamp ({max(self.timestamps)}): "
                    "the history must come before the prediction time"
                )
        return self


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None
    score: float = Field(description="Inner product of the user and item vectors (cosine for a text model).")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    history_text: str | None = Field(description="The text a text model read (null for a sequence model).")
    model: str = Field(description="The model that answered (its name under models/).")
    model_version: str
    index_version: str


class Item(BaseModel):
    item_id: str
    title: str | None
    metadata_text: str


class Health(BaseModel):
    status: str
    model: str
    model_version: str
    index_version: str
    items: int
    batches: int = Field(description="Batches this replica has encoded and searched since it started.")
    batched_requests: int = Field(description="Requests in those batches (and Serve's health probes).")
