"""Continuous batching: many requests advance one frame per tick through one batched backend step.

The scheduler lives on the thread that owns the model (MLX work never leaves it) and is driven
cooperatively: whoever waits for output calls `advance()`, which moves every request on, so
requests consumed side by side (several model.generate iterators, or the server's jobs) share
each frame step. One `advance()`:

  1. newcomers join at the frame boundary, up to `max_batch` requests in the batch (the rest wait,
     in arrival order);
  2. every newcomer's prompt is prefilled by `prefill_chunks` aligned chunks (all of it when nothing
     else is running), so a long prompt does not freeze the others' audio: they get a frame
     between its chunks. Newcomers arriving together all advance at once, so the batch fills in
     a few ticks (one newcomer per advance left the first ones ticking alone, at nearly the cost
     of a full batch, while the others waited);
  3. one tick of Generator.tick over every prefilled request: one row each through the backbone, and
     one batched depth pass for all of them, with the first frame of a newcomer whose prompt just
     finished and the frame after any recomputed canonical block (backend.frames).

A request keeps its own seed, sampler settings, stop rules, streaming decoder and cancellation;
its codes do not depend on the batch (backends hold rows independent). Requests leave when they
finish or are cancelled (closing their iterator), at a frame boundary, without disturbing others.
`on_advance` (optional) runs after every advance: the server uses it to hand out other requests'
chunks while one caller waits on a long prefill. `on_admit` (optional) runs at the start of every
advance, before newcomers join: the server starts the requests queued for it there, so requests
arriving at once all join the first tick (each one's start submits it from a nested iterate(),
whose own advance admits the next; admitted after a tick, one joined per tick).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

from engine.errors import InputError


class Scheduler:
    def __init__(self, generator, max_batch: int = 8, prefill_chunks: int = 1):
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        if prefill_chunks < 1:
            raise InputError(f"prefill_chunks must be at least 1, got {prefill_chunks}")
        self.generator = generator
        self.max_batch = int(max_batch)
        self.prefill_chunks = int(prefill_chunks)
        self.waiting: deque = deque()  # submitted, not yet in the batch
        self.batch: list = []  # in the batch: prefilling or generating
        self.owner = None  # set by a driver (the server's worker): recorded on each request
        self.on_advance: Callable[[], None] | None = None
        self.on_admit: Callable[[], None] | None = None
        self.ticks = 0
        self.peak_batch = 0

    # -- requests ---------------------------------------------------------------------------------
    def submit(self, tokens, mask, **options):
        """A new request (Generator.admit's options); it joins the batch at the next boundary."""
        request = self.generator.admit(tokens, mask, take_over=False, **options)
        request.owner = self.owner
        self.waiting.append(request)
        return request

    def iterate(self, request) -> Iterator:
        """The request's chunks, advancing the whole batch while it waits. Closing the iterator
        early cancels the request."""
        try:
            while True:
                while request.outbox:
                    yield request.outbox.pop(0)
                if request.done:
                    if request.error is not None:
                        raise request.error
                    return
                self.advance()
        finally:
            if not request.done or request in self.batch or request in self.waiting:
                self.cancel(request)

    def cancel(self, request) -> None:
        """Drop a request now (between ticks: its stream's rows match its cache)."""
        if request in self.waiting:
            self.waiting.remove(request)
        if request in self.batch:
            self.batch.remove(request)
        request.release()

    def cancel_all(self) -> None:
        for request in self.requests:
            self.cancel(request)

    @property
    def requests(self) -> list:
        return [*self.batch, *self.waiting]

    def idle(self) -> bool:
        return not self.batch and not self.waiting

    # -- one step ---------------------------------------------------------------------------------
    def advance(self) -> None:
        """Admit, prefill each newcomer by a few chunks, and tick every prefilled request once."""
        if self.on_admit is not None:
            self.on_admit()
        while self.waiting and len(self.batch) < self.max_batch:
            self.batch.append(self.waiting.popleft())
        self.peak_batch = max(self.peak_batch, len(self.batch))
        ready = [r for r in self.batch if r.prefilled and not r.done]
        running = bool(ready)
        for newcomer in [r for r in self.batch if not r.prefilled and not r.done]:
            try:
                if self.generator.prefill_some(newcomer, self.prefill_chunks if running else None):
                    ready.append(newcomer)  # its first frame joins this tick
            except Exception as error:  # this request fails alone; Generator.fail reset its stream
                self._fail(newcomer, error)
        if ready:
            try:
                self.generator.tick(ready)
                self.ticks += 1
            except Exception as error:  # every request of the tick lost its step
                for r in ready:
                    self._fail(r, error)
        self.batch = [r for r in self.batch if not r.done]
        if self.on_advance is not None:
            self.on_advance()

    def _fail(self, request, error: Exception) -> None:
        request.error = error
        request.done = True
        request.release()

    def run_until_idle(self) -> None:
        while not self.idle():
            self.advance()
