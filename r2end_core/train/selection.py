"""The epoch loop every model trains with: train an epoch, validate every few, keep the best validation
score's weights, stop after ``patience`` checks without a better one, and hand back a state to checkpoint
after each epoch (a run resumed from it continues where it stopped and keeps its best)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

from r2end_core.summaries import Metrics


def epochs(
    state: dict | None,
    max_epochs: int,
    train_epoch: Callable[[int], dict],
    validate: Callable[[], Metrics],
    snapshot: Callable[[], dict],
    eval_every: int = 1,
    patience: int | None = None,
    metric: str = "ndcg@10",
    patience_after: int = 0,
) -> Iterator[tuple[dict, dict]]:
    """Yields ``(state, record)`` after each epoch: ``record`` is the epoch's ``train_epoch`` output (and
    ``valid`` metrics when it validated); ``state`` holds ``epoch``, ``history`` (the records), ``best``
    (``epoch``, ``valid``, ``weights``: a deep copy of ``snapshot()``), ``current`` (``snapshot()``),
    ``resumed_from_epoch`` and ``train_seconds`` (what its epochs took, training and validating, summed over
    every attempt: a resumed run's own wall time covers only the rest). Pass a yielded state back in to
    resume after it. Checks up to epoch ``patience_after`` do not count towards ``patience``: in a first phase
    that trains towards another loss (a distillation term), validation can stall without the run being done.

    >>> scores = iter([0.1, 0.3, 0.2, 0.2, 0.5])
    >>> run = epochs(None, 5, lambda e: {"loss": 1 / e}, lambda: {"ndcg@10": next(scores)}, lambda: {}, patience=2)
    >>> [record["epoch"] for _, record in run]  # the last two checks found no better score: stop
    [1, 2, 3, 4]
    >>> scores = iter([0.3, 0.1, 0.1, 0.2, 0.2, 0.2])
    >>> run = epochs(None, 6, lambda e: {}, lambda: {"ndcg@10": next(scores)}, lambda: {}, patience=2, patience_after=3)
    >>> [record["epoch"] for _, record in run]  # epochs 2 and 3 stall in the first phase: not counted
    [1, 2, 3, 4, 5]
    """
    state = state or {"epoch": 0, "best": None, "history": [], "checks_without_gain": 0, "train_seconds": 0.0}
    state["resumed_from_epoch"] = state["epoch"]
    timed = "train_seconds" in state  # not in a checkpoint written before epochs were timed: a part is no total
    if patience is not None and state["checks_without_gain"] >= patience:
        return  # a finished run
    for epoch in range(state["epoch"] + 1, max_epochs + 1):
        started = time.perf_counter()
        record = {"epoch": epoch, **train_epoch(epoch)}
        if epoch % eval_every == 0:
            record["valid"] = validate()
            if state["best"] is None or record["valid"][metric] > state["best"]["valid"][metric]:
                state["best"] = {"epoch": epoch, "valid": record["valid"], "weights": copy.deepcopy(snapshot())}
                state["checks_without_gain"] = 0
            else:  # zero through the first phase, also for a state saved under a rule that counted it
                state["checks_without_gain"] = state["checks_without_gain"] + 1 if epoch > patience_after else 0
        state["history"].append(record)
        if timed:
            state["train_seconds"] += time.perf_counter() - started
        state.update(epoch=epoch, current=snapshot())
        yield state, record
        if patience is not None and state["checks_without_gain"] >= patience:
            return


def summary_fields(state: dict) -> dict:
    """What a finished loop's state tells a ``summaries.TrainSummary``."""
    return {
        "best_epoch": state["best"]["epoch"],
        "epochs_trained": state["epoch"],
        "resumed_from_epoch": state["resumed_from_epoch"],
        # None: a checkpoint from before epochs were timed
        "train_seconds": round(state["train_seconds"], 1) if "train_seconds" in state else None,
        "history": state["history"],
    }


def describe(model: str) -> Callable[[dict], str]:
    """A progress line for an epoch's record.

    >>> describe("sasrec")({"epoch": 3, "loss": 7.25, "valid": {"ndcg@10": 0.0412}})
    'sasrec epoch 3: loss 7.2500, valid NDCG@10 0.0412'
    """

    def line(record: dict) -> str:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "valid"))
        valid = f", valid NDCG@10 {record['valid']['ndcg@10']:.4f}" if "valid" in record else ""
        return f"{model} epoch {record['epoch']}: {losses}{valid}"

    return line
