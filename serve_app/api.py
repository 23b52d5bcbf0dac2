"""The HTTP API's request and response bodies (their field docs show in the OpenAPI page, /docs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from r2end_core.config import ServeConfig
from r2end_core.data.contract import ITEM_ID_PATTERN


def _unicode(text: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer or reply can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"not valid Unicode text: a lone surrogate at character {err.start}") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]
ItemId = Annotated[  # Unicode checked first, then the pattern (which pydantic then leaves out of the schema)
    str, AfterValidator(_unicode), Field(pattern=ITEM_ID_PATTERN, json_schema_extra={"pattern": ITEM_ID_PATTERN})
]
#: unix seconds from 1970 to the end of year 9999: the dates a history text can write
UnixSeconds = Annotated[StrictInt, Field(ge=0, le=253_402_300_799)]


class RecommendRequest(BaseModel):
    """A user's history, as item ids (oldest first) or as text, and how many items to return.

    ``{"history": ["B004Z40048", "B0043OYFKU"], "k": 10}`` or
    ``{"history_text": "1. Rose lip balm; brand: ...\\n2. ...", "k": 5}``

    Types are strict (``"k": "10"`` and ``"exclude_history": "yes"`` are refused); the bounds that depend on
    the server's config (``k``, the history's length, the text's) are written into its OpenAPI schema by
    ``with_limits``.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["history"]}, {"required": ["history_text"]}],
            "dependentRequired": {"timestamps": ["history"], "at": ["timestamps"]},
        },
    )

    history: list[ItemId] = Field(
        None,
        min_length=1,
        description="Item ids the user bought, oldest first. A text model reads them as training did (its "
        "history rule: the 8 most recent within 60 days of `at` by default); a sequence model reads the latest ones.",
    )
    timestamps: list[UnixSeconds] = Field(
        None, description="Unix seconds, one per history item (optional; the items are ordered by them)."
    )
    at: UnixSeconds = Field(None, description="Prediction time, unix seconds (default: the last timestamp).")
    history_text: Text = Field(  # its emptiness is checked after its Unicode, by _one_history
        None, json_schema_extra={"minLength": 1}, description="The history as text, instead of item ids (text models)."
    )
    k: StrictInt = Field(10, ge=1, description="How many items to return (1 to the server's max_k).")
    exclude_history: StrictBool = Field(True, description="Leave the history's own items out of the results.")

    @model_validator(mode="after")
    def _one_history(self):
        if (self.history is None) == (self.history_text is None):
            raise ValueError("give exactly one of 'history' (item ids) or 'history_text'")
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


def with_limits(schema: dict, cfg: ServeConfig) -> dict:
    """The OpenAPI ``schema`` with this server's bounds on a request (``cfg.max_k``, ``max_history``,
    ``max_text_chars``), which the endpoint enforces: what a client or a fuzzer reads is what is checked."""
    fields = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    fields["k"]["maximum"] = cfg.max_k
    fields["history"]["maxItems"] = fields["timestamps"]["maxItems"] = cfg.max_history
    fields["history_text"]["maxLength"] = cfg.max_text_chars
    return schema


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(description="What was wrong, naming the field or the limit.")


ERRORS = {
    400: "the body is not JSON",
    408: "the body was not received within the server's body_timeout_s",
    413: "the body is over the server's max_body_bytes",
    422: "the request breaks the schema or a bound (the message names the field)",
    503: "this replica's queue is full: retry after the Retry-After header's seconds",
}


def error_responses(*statuses: int) -> dict:
    """FastAPI's ``responses`` for the error answers a route can give (404 too where given)."""
    described = ERRORS | {404: "no such item"}
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}


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
