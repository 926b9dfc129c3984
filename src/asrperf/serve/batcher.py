"""The dynamic batcher: a bounded queue in front of the one thread that calls the engine.

An engine's model is not re-entrant, so exactly one thread (the worker) calls `transcribe`; the
event loop only enqueues jobs and awaits their futures, so it never blocks on the model. The
worker takes the oldest waiting job, waits up to `max_wait_s` after that job arrived for more
jobs (up to `max_batch_size`), then runs them as one call. With `max_batch_size = 1` and
`max_wait_s = 0` every job is its own call: a single-server FIFO queue (M/D/1 for a fixed
service time, which the calibration tests check against Pollaczek-Khinchine).

Times per job: queue_s = from enqueue to the start of the engine call that produced its text;
compute_s = that call's wall time (shared by every job in the batch); dispatch_s = the part of
queue_s after the call could have started (the engine free and the batch formed: full, or
max_wait_s after its oldest job arrived), i.e. the server's own scheduling delay, which an
overloaded machine makes grow (the thread is woken late). A batch whose call fails is
re-run one job at a time, so one bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# The engine's call: waveforms (16 kHz mono float32) in, one text per waveform out.
TranscribeFn = Callable[[list[np.ndarray]], list[str]]
# Called by the worker after each engine call: (batch size, compute seconds, ok).
BatchObserver = Callable[[int, float, bool], None]
_EWMA_WEIGHT = 0.2  # weight of the newest batch in the running mean of a call's compute time


class QueueFull(Exception):
    """The queue holds `max_queue` waiting jobs; the client should retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The batcher is draining for shutdown and takes no new jobs."""


@dataclass(frozen=True)
class Result:
    """One job's outcome: its text, or the engine's error, with the server-side times."""

    text: str
    queue_s: float  # enqueue -> start of the engine call that ran it
    compute_s: float  # wall time of that engine call (the whole batch)
    batch_size: int  # jobs in that call
    dispatch_s: float = 0.0  # part of queue_s after the call could have started (scheduling delay)
    error: str = ""  # the engine's one-line error; text is "" then


@dataclass(eq=False)
class Job:
    """A waveform waiting for the engine, and the future its request handler awaits."""

    audio: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued_s: float = field(default_factory=time.perf_counter)


def _settle(future: asyncio.Future, result: Result) -> None:
    if not future.done():  # the handler may have given up (client gone, shutdown timeout)
        future.set_result(result)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Batcher:
    """Jobs in, results out through asyncio futures; one worker thread owns the engine."""

    def __init__(self, transcribe: TranscribeFn, max_batch_size: int, max_wait_s: float, max_queue: int,
                 on_batch: BatchObserver | None = None) -> None:
        self.transcribe = transcribe
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.in_compute = 0  # jobs in the engine call now running
        self.batches = 0  # engine calls made
        self._mean_call_s = 0.0  # running mean of a call's compute time, for Retry-After
        self._last_end_s = -math.inf  # when the previous engine call ended (perf_counter)
        self._thread = threading.Thread(target=self._run, name="asrperf-engine", daemon=True)
        self._thread.start()

    # -- the event loop's side ----------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, audio: np.ndarray) -> Job:
        """Enqueue a waveform; raises QueueFull (with a retry hint) or ShuttingDown."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self._retry_after_s())
            job = Job(audio, loop.create_future(), loop)
            self._queue.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Take a job out of the queue (its client left); False when the engine already has it."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self._cond.notify()
            return True

    def _retry_after_s(self) -> int:
        # calls needed to drain the queue x the mean call, in whole seconds (HTTP delta-seconds)
        calls = math.ceil((len(self._queue) + self.in_compute) / self.max_batch_size)
        return max(1, math.ceil(calls * self._mean_call_s))

    def close(self, timeout_s: float | None = None) -> None:
        """Stop taking jobs, finish the ones queued, and end the worker (waits up to `timeout_s`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    # -- the worker thread ----------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        """Block until a batch is ready; None when stopping with nothing left to do."""
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return None
                # wait for the batch to fill, up to max_wait_s after its oldest job arrived; a job
                # cancelled meanwhile may empty the queue, then start over
                while self._queue and len(self._queue) < self.max_batch_size and not self._stopping:
                    remaining = self._queue[0].enqueued_s + self.max_wait_s - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._queue:
                    batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
                    self.in_compute = len(batch)
                    return batch

    def _ready_s(self, batch: list[Job]) -> float:
        """When `batch`'s call could have started: the engine free, and the batch full or its wait over."""
        deadline = batch[0].enqueued_s + self.max_wait_s
        formed = batch[-1].enqueued_s if len(batch) == self.max_batch_size else deadline
        return max(self._last_end_s, min(formed, deadline))

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            results = self._call(batch, self._ready_s(batch))
            self._last_end_s = time.perf_counter()
            for job, result in zip(batch, results):
                job.loop.call_soon_threadsafe(_settle, job.future, result)
            with self._cond:
                self.in_compute = 0

    def _call(self, batch: list[Job], ready_s: float) -> list[Result]:
        start = time.perf_counter()
        queue_s = [start - job.enqueued_s for job in batch]
        dispatch_s = max(0.0, start - ready_s)
        try:
            texts = self.transcribe([job.audio for job in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"the engine returned {len(texts)} texts for {len(batch)} inputs")
        except Exception as exc:  # noqa: BLE001  (an engine error is a response, never a dead worker)
            compute_s = time.perf_counter() - start
            self._observe(len(batch), compute_s, False)
            if len(batch) == 1:
                return [Result("", queue_s[0], compute_s, 1, dispatch_s, one_line(exc))]
            # one bad input must not fail its batch-mates: run each alone, so only it fails (the
            # failed call counts as their queue time: they waited through it)
            return [self._call([job], time.perf_counter())[0] for job in batch]
        compute_s = time.perf_counter() - start
        self._observe(len(batch), compute_s, True)
        return [Result(text, q, compute_s, len(batch), dispatch_s) for text, q in zip(texts, queue_s)]

    def _observe(self, size: int, compute_s: float, ok: bool) -> None:
        self.batches += 1
        self._mean_call_s = compute_s if self.batches == 1 else (
            _EWMA_WEIGHT * compute_s + (1 - _EWMA_WEIGHT) * self._mean_call_s)
        if self.on_batch is not None:
            self.on_batch(size, compute_s, ok)

