"""Dynamic batching for a replica: the requests that arrive while one batch is computed form the next.

Serve's ``@serve.batch`` forms a batch as soon as a request arrives (with ``batch_wait_timeout_s=0``) and
queues it behind the running one, so under load a replica computes a string of batches of one or two. Here
a batch is taken only when the compute is free: a lone request starts at once, and under load each batch
holds everything that queued meanwhile (up to ``max_batch_size``).
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
    then waits too). An exception in ``compute`` is every request of that batch's answer. ``batches`` and
    ``requests`` count what was computed.

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

    async def answer(self, request: Request) -> Answer:
        loop = asyncio.get_running_loop()
        if self.loop_task is None or self.loop_task.done() or self.loop_task.get_loop() is not loop:
            self.arrived = asyncio.Event()
            self.loop_task = asyncio.create_task(self._compute_batches())
        answer = loop.create_future()
        self.queued.append((request, answer))
        self.arrived.set()
        return await answer

    async def _compute_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            deadline = loop.time() + self.wait_s
            while len(self.queued) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), left)
            taken, self.queued = self.queued[: self.max_batch_size], self.queued[self.max_batch_size :]
            if not self.queued:
                self.arrived.clear()
            batch = [(request, answer) for request, answer in taken if not answer.done()]  # a client gone
            if not batch:
                continue
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            try:
                answers = await loop.run_in_executor(self.worker, self.compute, [request for request, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"compute gave {len(answers)} answers to a batch of {len(batch)}")
            except Exception as err:  # the batch's requests carry it; the loop goes on
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(err)
                continue
            for (_, answer), found in zip(batch, answers):
                if not answer.done():
                    answer.set_result(found)
