"""A property-based fuzz of the HTTP API (schemathesis on hypothesis), sent to a live endpoint: cases from
its own OpenAPI schema that fit it and ones that break it, and requests drawn from the real catalogue (real
item ids, in histories of every allowed length, with and without timestamps, and texts for a text model),
so that most cases get past validation into encoding and search. Every answer is checked against the
schema: no 5xx, a documented status, the documented content type, a body of the documented shape, and a
schema-breaking request refused.

    found = fuzz("http://127.0.0.1:8000", cases=300, seconds=60, item_ids=ids)
    found["server_errors"], found["check_failures"], found["reach_rate"]    # 0, {}, 0.62

Bounded in count and in time (cases still to come after ``seconds`` are skipped); seeded, so a run repeats.
"""

from __future__ import annotations

import time
from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
LAST_SECOND = 253_402_300_799  # the schema's bound on a timestamp
# A schema-breaking request counts as refused with schemathesis's default statuses or 413: a text over its
# length bound can also be over the body's byte limit, which the server checks first
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]


def catalogue_bodies(item_ids: list[str], texts: list[str], max_k: int, max_history: int) -> st.SearchStrategy:
    """Request bodies for ``POST /recommend`` that the schema allows, made of real item ids (and, when
    ``texts`` are given, history texts joined from them): lengths up to the server's bounds, repeated ids,
    timestamps in any order with ``at`` at or after the latest, ``k`` anywhere in its range."""
    ids = st.lists(st.sampled_from(item_ids), min_size=1, max_size=max_history)
    common = {"k": st.integers(1, max_k), "exclude_history": st.booleans()}

    @st.composite
    def with_times(draw) -> dict:
        history = draw(ids)
        times = draw(st.lists(st.integers(0, LAST_SECOND - 1), min_size=len(history), max_size=len(history)))
        body = {"history": history, "timestamps": times}
        if draw(st.booleans()):
            body["at"] = draw(st.integers(max(times), LAST_SECOND))
        return body | {key: draw(value) for key, value in common.items()}

    kinds = [st.fixed_dictionaries({"history": ids}, optional=common), with_times()]
    if texts:
        joined = st.lists(st.sampled_from(texts), min_size=1, max_size=8).map("\n".join)
        kinds.append(st.fixed_dictionaries({"history_text": joined}, optional=common))
    return st.one_of(kinds)


def fuzz(
    url: str,
    cases: int,
    seconds: float,
    seed: int = 0,
    item_ids: list[str] | None = None,
    texts: list[str] | None = None,
) -> dict:
    """Send up to ``cases`` cases: from the catalogue three times in five when ``item_ids`` are given, else
    from the schema alone (positive and negative). Returns ``{"cases", "statuses", "server_errors",
    "reached" (answers 200 to POST /recommend: encoded and searched), "reach_rate", "check_failures"
    (count per check), "failures" (the first few: request, answer, what failed)}``."""
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSED}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    from_schema = [schema.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    kinds = from_schema
    if item_ids:
        limits = schema.raw_schema["components"]["schemas"]["RecommendRequest"]["properties"]
        bodies = catalogue_bodies(item_ids, texts or [], limits["k"]["maximum"], limits["history"]["maxItems"])
        recommend = schema["/recommend"]["POST"]
        kinds = [*[bodies.map(lambda body: recommend.Case(body=body, media_type="application/json"))] * 3, *kinds]
    statuses, failed, failures = Counter(), Counter(), []
    reached, deadline = 0, time.monotonic() + seconds

    @hypothesis_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # counting, not shrinking a failure
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(kinds))
    def send(case) -> None:
        nonlocal reached
        if time.monotonic() > deadline:
            return
        request = {"method": case.method, "path": case.formatted_path, "body": repr(case.body)[:300]}
        try:
            answer = case.call(base_url=url, timeout=30)
        except requests.RequestException as err:  # no answer at all counts against the server too
            statuses[type(err).__name__] += 1
            if len(failures) < 10:
                failures.append(request | {"failed": [type(err).__name__]})
            return
        statuses[str(answer.status_code)] += 1
        reached += case.method == "POST" and case.path == "/recommend" and answer.status_code == 200
        try:
            case.validate_response(answer, checks=CHECKS)
        except FailureGroup as group:
            titles = sorted({failure.title for failure in group.exceptions})
            failed.update(titles)
            if len(failures) < 10:
                failures.append(request | {"status": answer.status_code, "answer": answer.text[:300], "failed": titles})

    send()
    total = sum(statuses.values())
    return {
        "cases": total,
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(n for status, n in statuses.items() if not status.isdigit() or int(status) >= 500),
        "reached": reached,
        "reach_rate": round(reached / total, 4) if total else 0.0,
        "check_failures": dict(sorted(failed.items())),
        "failures": failures,
    }
