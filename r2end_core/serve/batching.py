"""Dynamic batching for a replica: the requests that arrive while one batch is computed form the next.

Serve's ``@serve.batch`` forms a batch as soon as a request arrives (with ``batch_wait_timeout_s=0``) and
queues it behind the running one, so requests that arrive one at a time during a batch each become a batch
of one. Here a batch is taken only when the compute is free: a lone request starts at once, and under load
each batch holds everything that queued meanwhile (up to ``max_batch_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Batcher(Generic[Request, Answer]):
    """``await batcher.answer(request)``: ``compute(requests) -> answers`` (one answer per request, in order)
    runs on one worker thread, one batch at a time, so the event loop keeps taking requests meanwhile.

    ``wait_s`` > 0 lets a batch wait that long for more requests once the compute is free (a lone request
    then waits too). A batch whose ``compute`` raises is computed again request by request: the exception is the
    answer of the requests that raise it alone. ``batches`` and ``requests`` count the batches formed.

    >>> batcher = Batcher(lambda xs: [x * x for x in xs], max_batch_size=4)
    >>> async def ten():
    ...     return await asyncio.gather(*(batcher.answer(x) for x in range(10)))
    >>> asyncio.run(ten())
    [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    >>> batcher.batches, batcher.requests  # all ten queued before the first batch: 4 + 4 + 2
    (3, 10)
    """

    def __init__(self, compute: Callable[[list[Request]], Sequence[Answer]], max_batch_size: int, wait_s: float = 0):
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0 (got {max_batch_size}, {wait_s})")
        self.compute, self.max_batch_size, self.wait_s = compute, max_batch_size, wait_s
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self.queued: list[tuple[Request, asyncio.Future]] = []
        self.batches = self.requests = 0
        self.arrived: asyncio.Event | None = None  # made on first use, in the loop that serves
        self.loop_task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        """Requests queued for a batch (not the one being computed)."""
        return len(self.queued)

    async def answer(self, request: Request) -> Answer:
        if self.loop_task is None or self.loop_task.done():  # first use, or a loop that ended (asyncio.run)
            self.arrived = asyncio.Event()
            self.loop_task = asyncio.create_task(self._compute_batches())
        answer = asyncio.get_running_loop().create_future()
        self.queued.append((request, answer))
        self.arrived.set()
        return await answer

    async def _compute_batches(self) -> None:
        batch: list[tuple[Request, asyncio.Future]] = []
        try:
            await self._compute_each_batch(batch)
        finally:  # cancelled (the replica stops) or broken: no request is left waiting for an answer
            stopped = RuntimeError("the replica's batch loop stopped")
            for _, answer in [*batch, *self.queued]:
                if not answer.done():
                    answer.set_exception(stopped)
            self.queued = []

    async def _compute_each_batch(self, batch: list[tuple[Request, asyncio.Future]]) -> None:
        """The loop; ``batch`` holds the batch being computed, for ``_compute_batches`` to fail if it stops."""
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            deadline = loop.time() + self.wait_s
            while True:
                self.queued = [(request, answer) for request, answer in self.queued if not answer.done()]  # gone
                if len(self.queued) >= self.max_batch_size or (left := deadline - loop.time()) <= 0:
                    break
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), left)
            batch[:], self.queued = self.queued[: self.max_batch_size], self.queued[self.max_batch_size :]
            if not self.queued:
                self.arrived.clear()
            if not batch:
                continue
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            answers = await loop.run_in_executor(self.worker, self._answers, [request for request, _ in batch])
            for (_, answer), (result, failed) in zip(batch, answers):
                if answer.done():  # its client left while it was computed
                    continue
                if failed is None:
                    answer.set_result(result)
                else:
                    answer.set_exception(failed)
            batch.clear()

    def _answers(self, requests: list[Request]) -> list[tuple[Answer | None, Exception | None]]:
        """(answer, None) or (None, error) per request. A batch whose compute fails is computed again one request
        at a time, so a request that fails fails alone and the others get their answers."""
        try:
            answers = self.compute(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"compute gave {len(answers)} answers to a batch of {len(requests)}")
            return [(answer, None) for answer in answers]
        except Exception as err:  # the loop goes on whatever compute raises
            if len(requests) == 1:
                return [(None, err)]
        return [self._answers([request])[0] for request in requests]
