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
    """The single model thread and its bounded queue of jobs."""

    def __init__(self, max_queue: int = 8, name: str = "csm-model",
                 on_exit: Callable[[], None] | None = None) -> None:
        """`on_exit` runs on the worker thread as it ends (MLX wants its streams freed there)."""
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self._on_exit = on_exit
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        self.current: Job | None = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0}
        self._mean_job_s = 5.0  # running estimate used for Retry-After

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

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
        if self.current is not None:
            self.current.cancel()
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
        return self.current is not None

    def retry_after(self) -> int:
        """Seconds a client should wait before trying again (at least 1)."""
        waiting = self._queue.qsize() + (1 if self.current is not None else 0)
        return max(1, math.ceil(self._mean_job_s * max(1, waiting)))

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
            if self._on_exit is not None:
                self._on_exit()

    def _serve_jobs(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():  # cancelled while waiting: never started
                self._finish(job, "cancelled", JobCancelled("the request was cancelled"))
                continue
            self.current = job
            job.started.set()
            began = time.perf_counter()
            try:
                self._run_job(job)
            finally:
                self.current = None
                elapsed = time.perf_counter() - began
                self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed

    def _run_job(self, job: Job) -> None:
        iterator = None
        try:
            iterator = iter(job.fn(job))
            while not job.cancelled.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._finish(job, "completed")
                    return
                job._post(_ITEM, item)
            _close(iterator)  # GeneratorExit inside the job's generator: a turn is not stored
            # An error, not a normal end: whoever still reads must not take the cut-short
            # output for a complete one.
            self._finish(job, "cancelled", JobCancelled("the request was cancelled"))
        except BaseException as error:  # report every failure to the waiting request
            _close(iterator)
            self._finish(job, "failed", error)
            if not isinstance(error, Exception):
                raise

    def _finish(self, job: Job, outcome: str, error: BaseException | None = None) -> None:
        job.outcome = outcome
        self.stats[outcome] += 1
        job.finished.set()
        if error is not None:
            job._post(_ERROR, error)
        else:
            job._post(_DONE)


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass

