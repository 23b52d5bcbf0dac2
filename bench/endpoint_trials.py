"""What a live endpoint does under hostile or changing conditions, measured the same way by the tests (small)
and by the serving benchmark (``bench.serving_cpu``): clients that trickle their bodies beside normal traffic,
a flood past the replica's queue, and a new version promoted and rolled back under load.

    found = slow_clients(url, body, slow=16, requests_each=40)
    found["p99_ratio"], found["errors"], found["slow_answers"]    # 1.2, 0, {"408": 16}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable

import aiohttp
import numpy as np
import requests


def trickle(url: str, body: dict, stop: threading.Event) -> bytes:
    """A client that sends its body a byte every half second until the server answers (or ``stop``)."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=0.5) as conn:
        head = f"POST /recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        conn.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode())
        for byte in payload:
            if stop.is_set():
                return b""
            conn.sendall(bytes([byte]))
            try:
                if answer := conn.recv(200):
                    return answer
            except TimeoutError:
                continue
    return b""


def timed_requests(url: str, body: dict, n: int) -> tuple[list[float], int]:
    """(seconds of each of ``n`` requests sent one after another, how many were not answered 200)."""
    took, errors = [], 0
    for _ in range(n):
        try:
            answer = requests.post(f"{url}/recommend", json=body, timeout=30)
        except requests.RequestException:
            errors += 1
            continue
        errors += answer.status_code != 200
        took.append(answer.elapsed.total_seconds())
    return took, errors


def slow_clients(url: str, body: dict, slow: int, requests_each: int) -> dict:
    """Normal requests alone, then beside ``slow`` clients trickling their bodies (each until the server
    answers it): the p99s, their ratio, normal traffic's errors, and the first line the slow clients got."""
    alone, errors_alone = timed_requests(url, body, requests_each)
    stop, answers = threading.Event(), []
    clients = [threading.Thread(target=lambda: answers.append(trickle(url, body, stop))) for _ in range(slow)]
    for client in clients:
        client.start()
    beside, errors_beside = timed_requests(url, body, requests_each)
    for client in clients:
        client.join(60)
    stop.set()
    p99 = {name: 1000 * float(np.percentile(took, 99)) for name, took in (("alone", alone), ("beside", beside))}
    return {
        "slow_clients": slow,
        "requests_each": requests_each,
        "p99_alone_ms": round(p99["alone"], 1),
        "p99_beside_ms": round(p99["beside"], 1),
        "p99_ratio": round(p99["beside"] / p99["alone"], 2),
        "errors": errors_alone + errors_beside,
        "slow_answers": dict(Counter(a.split(b"\r\n", 1)[0].decode() if a else "no answer" for a in answers)),
    }


def flood(url: str, body: dict, n: int) -> dict:
    """``n`` requests at once: their statuses and the Retry-After values of the 503s."""

    async def send() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one():
                async with session.post(f"{url}/recommend", json=body) as answer:
                    return answer.status, answer.headers.get("Retry-After")

            return await asyncio.gather(*(one() for _ in range(n)))

    answers = asyncio.run(send())
    return {
        "statuses": dict(Counter(str(status) for status, _ in answers)),
        "retry_after": sorted({retry for status, retry in answers if status == 503}),
    }


def rollout(url: str, body: dict, build: Callable[[], str], move: Callable[[argparse.Namespace], None]) -> dict:
    """A client sends ``body`` one request after another while ``build`` makes a new index version (which
    changes nothing served), ``move`` promotes it (and redeploys), then rolls back: the version built (``to``),
    errors, the versions that answered in turn, and each one's first answer."""
    answers, first_items, stop = [], {}, threading.Event()

    def load():
        while not stop.is_set():
            try:
                response = requests.post(f"{url}/recommend", json=body, timeout=60)
            except requests.RequestException as err:
                answers.append((type(err).__name__, None))
                continue
            got = response.json() if response.ok else {}
            answers.append((response.status_code, got.get("index_version")))
            if got and got["index_version"] not in first_items:
                first_items[got["index_version"]] = [item["item_id"] for item in got["items"]]

    sender = threading.Thread(target=load)
    sender.start()
    try:
        to_version = build()
        move(argparse.Namespace(version=to_version, rollback=False, alias="live"))
        move(argparse.Namespace(version=None, rollback=True, alias="live"))
    finally:
        stop.set()
        sender.join()
    seen = [v for i, (_, v) in enumerate(answers) if i == 0 or answers[i - 1][1] != v]
    return {
        "to": to_version,
        "requests": len(answers),
        "errors": sum(status != 200 for status, _ in answers),
        "versions_seen": seen,
        "first_items": first_items,
    }
