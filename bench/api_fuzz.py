"""A property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis on hypothesis): bodies,
paths and parameters that fit the schema and ones that break it, sent to a live endpoint. Counts the
answers by status; a 5xx is a server error, which no input may cause.

    found = fuzz("http://127.0.0.1:8000", cases=300, seconds=60)
    found["server_errors"], found["statuses"]        # 0, {"200": 41, "422": 233, "404": 26}

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


def fuzz(url: str, cases: int, seconds: float, seed: int = 0) -> dict:
    """``{"cases", "server_errors", "statuses", "failures": [first few 5xx: method, path, body, answer]}``."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    cases_of = st.one_of(*(schema.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))
    statuses, failures, deadline = Counter(), [], time.monotonic() + seconds

    @hypothesis_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # counting, not shrinking a failure
        suppress_health_check=list(HealthCheck),
    )
    @given(cases_of)
    def send(case) -> None:
        if time.monotonic() > deadline:
            return
        try:
            answer = case.call(base_url=url, timeout=30)
        except requests.RequestException as err:  # no answer at all counts against the server too
            statuses[type(err).__name__] += 1
            failures.append({"method": case.method, "path": case.formatted_path, "body": repr(case.body)[:300]})
            return
        statuses[str(answer.status_code)] += 1
        if answer.status_code >= 500 and len(failures) < 10:
            failures.append(
                {
                    "method": case.method,
                    "path": case.formatted_path,
                    "body": repr(case.body)[:300],
                    "answer": answer.text[:300],
                }
            )

    send()
    server_errors = sum(n for status, n in statuses.items() if not status.isdigit() or int(status) >= 500)
    return {
        "cases": sum(statuses.values()),
        "server_errors": server_errors,
        "statuses": dict(sorted(statuses.items())),
        "failures": failures,
    }
