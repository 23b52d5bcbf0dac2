"""A replica's dynamic batching (no Ray): what a batch holds, and what its requests get back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from r2end_core.serve.batching import Batcher


class Gated:
    """compute(): records each batch; the first one holds until ``release`` (a batch being computed)."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, requests: list[int]) -> list[int]:
        self.batches.append(requests)
        self.started.set()
        self.release.wait(10)
        return [-r for r in requests]


async def while_first_batch_computes(batcher: Batcher, gate: Gated, then) -> list:
    """Send request 0; once its batch is computing, run ``then()`` (it sends more), release, gather all."""
    first = asyncio.create_task(batcher.answer(0))
    await asyncio.to_thread(gate.started.wait, 10)
    more = await then()
    gate.release.set()
    return await asyncio.wait_for(asyncio.gather(first, *more, return_exceptions=True), 10)


def test_requests_that_arrive_during_a_batch_form_the_next_batch_together():
    gate = Gated()
    batcher = Batcher(gate, max_batch_size=4)

    async def five_more():
        tasks = [asyncio.create_task(batcher.answer(r)) for r in range(1, 6)]
        await asyncio.sleep(0.05)  # they queue one by one, each in its own turn of the event loop
        return tasks

    answers = asyncio.run(while_first_batch_computes(batcher, gate, five_more))
    assert answers == [0, -1, -2, -3, -4, -5]
    assert gate.batches == [[0], [1, 2, 3, 4], [5]]  # a lone request went at once; then full batches
    assert (batcher.batches, batcher.requests) == (3, 6)


def test_a_wait_fills_a_batch_and_ends_when_it_is_full():
    batches = []
    batcher = Batcher(lambda rs: batches.append(rs) or rs, max_batch_size=2, wait_s=30)

    async def two_apart():
        first = asyncio.create_task(batcher.answer("a"))
        await asyncio.sleep(0.05)
        return await asyncio.wait_for(asyncio.gather(first, batcher.answer("b")), 10)  # not the 30 s wait

    assert asyncio.run(two_apart()) == ["a", "b"]
    assert batches == [["a", "b"]]


def test_a_lone_request_goes_alone_once_the_wait_is_over():
    batches = []
    batcher = Batcher(lambda rs: batches.append(rs) or rs, max_batch_size=4, wait_s=0.05)

    async def alone():
        return await asyncio.wait_for(batcher.answer("a"), 10)

    assert asyncio.run(alone()) == "a" and batches == [["a"]]


def test_requests_waiting_when_the_batch_loop_stops_get_an_error_not_silence():
    gate = Gated()
    batcher = Batcher(gate, max_batch_size=4)

    async def stop_the_loop():
        batcher.loop_task.cancel()  # what the replica's shutdown does to it
        return [asyncio.create_task(batcher.answer(1))]  # a new request starts a new loop

    answers = asyncio.run(while_first_batch_computes(batcher, gate, stop_the_loop))
    assert isinstance(answers[0], RuntimeError) and "batch loop stopped" in str(answers[0])
    assert answers[1] == -1


def test_a_failing_request_fails_alone_and_its_batch_mates_get_their_answers():
    computed = []

    def compute(requests: list[int]) -> list[int]:
        computed.append(list(requests))
        if 13 in requests:
            raise ValueError("unlucky request")
        return requests

    batcher = Batcher(compute, max_batch_size=2)

    async def four():
        answers = asyncio.gather(*(batcher.answer(r) for r in (12, 13, 14, 15)), return_exceptions=True)
        return await asyncio.wait_for(answers, 10)

    twelve, thirteen, fourteen, fifteen = asyncio.run(four())
    assert isinstance(thirteen, ValueError) and (twelve, fourteen, fifteen) == (12, 14, 15)
    assert computed == [[12, 13], [12], [13], [14, 15]]  # the failed batch again, one request at a time


def test_a_compute_that_answers_the_wrong_number_of_requests_is_an_error():
    batcher = Batcher(lambda requests: requests[:1], max_batch_size=2)

    async def two():
        return await asyncio.wait_for(asyncio.gather(batcher.answer(1), batcher.answer(2), return_exceptions=True), 10)

    # request by request the answers are right again: only a batch of two got one answer
    assert asyncio.run(two()) == [1, 2]
    lone = Batcher(lambda requests: [], max_batch_size=2)
    with pytest.raises(RuntimeError, match="0 answers to a batch of 1"):
        asyncio.run(asyncio.wait_for(lone.answer(1), 10))


def test_a_request_whose_client_left_is_not_computed():
    gate = Gated()
    batcher = Batcher(gate, max_batch_size=4)

    async def one_left():
        gone, kept = asyncio.create_task(batcher.answer(1)), asyncio.create_task(batcher.answer(2))
        await asyncio.sleep(0.05)
        gone.cancel()
        return [kept]

    assert asyncio.run(while_first_batch_computes(batcher, gate, one_left)) == [0, -2]
    assert gate.batches == [[0], [2]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        Batcher(list, max_batch_size=0)
