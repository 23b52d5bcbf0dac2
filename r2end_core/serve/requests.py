"""Request bodies for ``POST /recommend`` built from prepared users (the pipeline's example query, the
serving benchmark's load)."""

from __future__ import annotations


def test_time_request(user: dict, k: int, recent_items: int = 8) -> dict:
    """A request body for a prepared user (a ``schemas.USERS`` row) at their test item: the last
    ``recent_items`` purchases before it, with their timestamps and the test item's time as ``at``.

    >>> test_time_request({"sequence": ["a", "b", "c"], "timestamps": [1, 2, 3]}, k=5)
    {'history': ['a', 'b'], 'k': 5, 'timestamps': [1, 2], 'at': 3}
    """
    end = len(user["sequence"]) - 1
    start = max(0, end - recent_items)
    body = {"history": user["sequence"][start:end], "k": k}
    if user["timestamps"] is not None:
        body.update(timestamps=user["timestamps"][start:end], at=user["timestamps"][end])
    return body
