"""One worker thread that runs every piece of model work, one job at a time, in arrival order.

MLX work is not shared across threads: the model is loaded on this thread and every call that
touches it (generation, Mimi encode/decode, turning results into numpy) runs here. The HTTP side
(an asyncio event loop) only submits jobs and reads what they produce.

A job is a function returning an iterable. The worker iterates it and hands each item to the
job's asyncio queue; between items it checks the job's cancel flag, and when set it closes the
iterator (Python raises GeneratorExit inside it, so a Conversation turn in progress is dropped,
not stored) and moves on to the next job. A job cancelled while still queued never starts.

The queue is bounded: `submit` raises QueueFull at once when it is full, with a Retry-After
estimate from the average job time, so the server can answer 503 without waiting.

Batching (`max_batch` > 1, with the model generator's Scheduler attached by `attach`): up to
max_batch jobs run at once, interleaved on this one thread. A job whose generation request waits
for frames is parked; the worker steps the jobs that have output (or are not generating), and when
every job waits it advances the scheduler, which moves all their requests on by one frame in one
batched step. While one job waits inside a long step (a newcomer's prefill, a whole-file request),
the scheduler's `on_advance` hook lets the worker hand out the other jobs' chunks, so their
streams do not freeze. Jobs queued while the batch has room are started at the start of every
scheduler step too (its `on_admit` hook), before the step's tick, so requests arriving together
share the batch from its first tick. Cancellation and disconnects stay per job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import queue
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterable

_ITEM, _DONE, _ERROR = "item", "done", "error"


class QueueFull(Exception):
    """The generation queue is full; try again after `retry_after` seconds."""

    def __init__(self, size: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {size} requests are already waiting; "
                         f"try again in about {retry_after} s")
        self.size = size
        self.retry_after = retry_after


class WorkerStopped(Exception):
    """The worker has shut down (the server is stopping)."""


class JobCancelled(WorkerStopped):
    """The job was stopped before it finished (its client left, or the server is stopping)."""


class Job:
    """One unit of model work and the channel its results come back through."""

    def __init__(self, fn: Callable[["Job"], Iterable[Any]],
                 loop: asyncio.AbstractEventLoop | None, label: str = "job") -> None:
        """`loop` receives the items; None for a job nobody reads (see Worker.call)."""
        self.fn = fn
        self.label = label
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()
        self.outcome: str | None = None  # "completed" | "cancelled" | "failed"
        self._loop = loop
        self._items: asyncio.Queue | None = asyncio.Queue() if loop is not None else None

    def cancel(self) -> None:
        """Ask the worker to stop this job at the next chunk boundary (or skip it if queued)."""
        self.cancelled.set()

    # --- worker-thread side -------------------------------------------------------------
    def _post(self, kind: str, payload: Any = None) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
            self.cancelled.set()

    # --- event-loop side ----------------------------------------------------------------
    async def next(self) -> tuple[bool, Any]:
        """(True, item) for the next item, (False, None) at the end; re-raises the job's error."""
        kind, payload = await self._items.get()
        if kind == _ITEM:
            return True, payload
        if kind == _ERROR:
            raise payload
        return False, None

    async def items(self) -> AsyncIterator[Any]:
        """Every item the job yields. Leaving the loop early (or being cancelled) cancels the job."""
        try:
            while True:
                more, item = await self.next()
                if not more:
                    return
                yield item
        finally:
            if not self.finished.is_set():
                self.cancel()

    async def result(self) -> list[Any]:
        """All items, once the job is done."""
        return [item async for item in self.items()]


class Worker:
    """The single model thread, its bounded queue of jobs, and the jobs it runs side by side."""

    def __init__(self, max_queue: int = 8, name: str = "csm-model",
                 on_exit: Callable[[], None] | None = None, max_batch: int = 1) -> None:
        """`on_exit` runs on the worker thread as it ends (MLX wants its streams freed there).
        `max_batch`: jobs run at once (their frames batched once a scheduler is attached)."""
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._on_exit = on_exit
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        self.running: list[Job] = []  # started, not finished
        self._executing: list[Job] = []  # jobs inside next() now (nested while one waits)
        self._iterators: dict[int, Any] = {}
        self._began: dict[int, float] = {}
        self.scheduler = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0}
        self._mean_job_s = 5.0  # running estimate used for Retry-After

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def current(self) -> Job | None:
        return self.running[0] if self.running else None

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def attach(self, scheduler) -> None:
        """Batch the jobs' generation through `scheduler` (engine/scheduler.py). Worker thread only."""
        self.scheduler = scheduler
        scheduler.on_advance = self._hand_out
        scheduler.on_admit = self._join_before_tick

    def call(self, fn: Callable[[], Any], label: str = "call", timeout: float | None = None) -> Any:
        """Run `fn()` on the worker thread and wait for its value, from outside any event loop
        (start-up before the server runs). Raises what `fn` raises."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run(job: Job):
            try:
                future.set_result(fn())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)
            return ()

        self._enqueue(Job(run, None, label))
        return future.result(timeout)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Cancel waiting and running jobs and end the thread."""
        self._stopping = True
        for job in list(self.running):
            job.cancel()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job._post(_ERROR, WorkerStopped("the server is shutting down"))
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queued(self) -> int:
        return self._queue.qsize()

    def busy(self) -> bool:
        return bool(self.running)

    def active(self) -> int:
        """Generation requests running now (in the batch or waiting to join it); without batching,
        the jobs running."""
        if self.scheduler is not None:
            return len(self.scheduler.requests)
        return len(self.running)

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again (at least 1)."""
        waiting = self._queue.qsize() + len(self.running)
        return max(1, math.ceil(self._mean_job_s * max(1, waiting) / self.max_batch))

    def submit(self, fn: Callable[[Job], Iterable[Any]], label: str = "job",
               loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue `fn` (called on the worker thread with its Job; returns an iterable of items).

        Must be called from the event loop (or pass `loop`). Raises QueueFull when full.
        """
        job = Job(fn, loop or asyncio.get_running_loop(), label)
        self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        if self._stopping or not self._thread.is_alive():
            raise WorkerStopped("the model worker is not running")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.max_queue, self.retry_after()) from None

    def _run(self) -> None:
        try:
            self._serve_jobs()
        finally:
            for job in list(self.running):
                self._leave(job, "cancelled", WorkerStopped("the server is shutting down"))
            if self._on_exit is not None:
                self._on_exit()

    def _serve_jobs(self) -> None:
        while True:
            if not self._take_jobs():
                return
            self._step_some()

    def _take_jobs(self) -> bool:
        """Start queued jobs while there is room (waiting for one when nothing runs). False at
        the stop signal."""
        while len(self.running) < self.max_batch:
            try:
                job = self._queue.get(block=not self.running)
            except queue.Empty:
                return True
            if job is None:
                return False
            self._start(job)
        return True

    def _start(self, job: Job) -> bool:
        """Count a job taken from the queue as running (False: it was cancelled while waiting)."""
        if job.cancelled.is_set():  # cancelled while waiting: never started
            self._finish(job, "cancelled", JobCancelled("the request was cancelled"))
            return False
        job.started.set()
        self._began[id(job)] = time.perf_counter()
        self.running.append(job)
        return True

    def _admit(self) -> None:
        """At a frame boundary, start the jobs that arrived while others were generating, so they
        join the next batched step instead of waiting until some job hands back a chunk. A new
        job's first step runs here, nested inside the step that is waiting for frames: it submits
        its request to the scheduler and returns with its first chunk (the scheduler's step is
        complete when this runs, so the nested steps advance it safely)."""
        while len(self.running) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:  # the stop signal is the top level's to act on
                self._queue.put_nowait(None)
                return
            if self._start(job):
                self._step(job)

    def _join_before_tick(self) -> None:
        """The scheduler's on_admit hook, at the start of each of its steps: start queued jobs and
        the first step of running jobs not stepped yet, so that their requests are submitted before
        the step's tick and requests arriving together share the batch from its first tick (each
        first step runs nested: it submits, then waits inside a scheduler step of its own, whose
        hook starts the next one)."""
        self._admit()
        for job in list(self.running):
            if job not in self._executing and id(job) not in self._iterators:
                self._step(job)

    def _waiting_for_frames(self, job: Job) -> bool:
        """Whether the job's generation request has nothing to hand out yet."""
        if self.scheduler is None:
            return False
        return any(r.owner is job and not r.outbox and not r.done for r in self.scheduler.requests)

    def _step_some(self) -> None:
        """Step one job that can make progress; when all wait for frames, advance the batch."""
        self._drop_cancelled()
        for job in list(self.running):
            if job not in self._executing and not self._waiting_for_frames(job):
                self.running.remove(job)  # round robin: it goes to the back
                self.running.append(job)
                self._step(job)
                return
        if self.scheduler is not None and not self.scheduler.idle():
            self.scheduler.advance()

    def _hand_out(self) -> None:
        """After each scheduler step: admit newcomers, start jobs taken together with the one that
        is stepping (so requests arriving at once share the batch from its first ticks, instead of
        waiting for the first one's first chunk), step the other jobs that have chunks ready (not
        the ones inside next() now), and drop cancelled ones."""
        self._drop_cancelled()
        self._admit()
        for job in list(self.running):
            if job in self._executing or self.scheduler is None:
                continue
            not_started = id(job) not in self._iterators  # taken with others: it joins this batch
            if not_started or any(r.owner is job and r.outbox for r in self.scheduler.requests):
                self._step(job)

    def _drop_cancelled(self) -> None:
        for job in list(self.running):
            if job.cancelled.is_set() and job not in self._executing:
                # GeneratorExit inside the job's generator: a turn is not stored, its request
                # leaves the batch. An error, not a normal end: whoever still reads must not take
                # the cut-short output for a complete one.
                _close(self._iterators.get(id(job)))
                self._leave(job, "cancelled", JobCancelled("the request was cancelled"))

    def _step(self, job: Job) -> None:
        """One item of `job` (starting it on first use)."""
        self._executing.append(job)
        previous = self.scheduler.owner if self.scheduler is not None else None
        if self.scheduler is not None:
            self.scheduler.owner = job
        try:
            iterator = self._iterators.get(id(job))
            if iterator is None:
                iterator = self._iterators[id(job)] = iter(job.fn(job))
            item = next(iterator)
        except StopIteration:
            self._leave(job, "completed")
        except BaseException as error:  # report every failure to the waiting request
            _close(self._iterators.get(id(job)))
            self._leave(job, "failed", error)
            if not isinstance(error, Exception):
                raise
        else:
            job._post(_ITEM, item)
        finally:
            self._executing.remove(job)
            if self.scheduler is not None:
                self.scheduler.owner = previous

    def _leave(self, job: Job, outcome: str, error: BaseException | None = None) -> None:
        if job in self.running:
            self.running.remove(job)
        self._iterators.pop(id(job), None)
        began = self._began.pop(id(job), None)
        if began is not None:
            self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.perf_counter() - began)
        self._finish(job, outcome, error)

    def _finish(self, job: Job, outcome: str, error: BaseException | None = None) -> None:
        job.outcome = outcome
        self.stats[outcome] += 1
        job.finished.set()
        if error is not None:
            job._post(_ERROR, error)
        else:
            job._post(_DONE)


def _close(iterator) -> None:
    if iterator is None:
        return
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass

