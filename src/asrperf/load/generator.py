"""Run one load: send requests by an arrival pattern, bounded in count and time, record each one.

Open loop: every send time is fixed before the run starts (`arrivals.schedule`); the scheduler
sleeps until each one and starts the request as its own task, never waiting for an answer. A
slow server therefore meets the full offered load, and every latency is measured from the
scheduled time, so time spent waiting anywhere (for an in-flight slot, a connection, the
server's queue) counts against the server instead of vanishing (coordinated omission, as wrk2
and HdrHistogram describe it). Closed loop: N clients, each sends as soon as its previous
answer is in; its "scheduled" time is that moment.

Sending on time (the generator's lateness is on every row, measured to the request's first byte
on the wire):
- each clip's multipart body is encoded once, before the schedule starts, so a request costs
  only its headers;
- the scheduler sleeps until SPIN_S before each send time and waits the rest on the clock, since
  an event loop's sleep wakes a millisecond or more late; it yields to the loop while it waits,
  so a request started just before goes on meanwhile;
- once it has started a request, it yields until that request is on the wire (or waits for an
  in-flight slot) before it prepares the next: the send path yields to the loop several times
  before its first byte, and whatever the scheduler did in between was that request's lateness;
- idle connections are kept for the whole run (KEEPALIVE_S; an asrperf server keeps them 75 s),
  and a few are opened before the schedule starts (PREOPEN, by a GET on the endpoint, which does
  no work), since a connection opened at send time adds its connect to the lateness;
- the cyclic garbage collector pauses for the run (in a process holding many objects a full
  collection can stop the loop for tens of ms);
- while it runs, the scheduling thread takes the lowest real-time priority where the OS permits
  it (root or CAP_SYS_NICE; the row's generator_policy says), so a server computing on every core
  does not delay its wake-ups. Without that permission it stays at normal priority, and an
  asrperf server it starts itself runs niced (launch.SERVER_NICE) for the same reason.

A run ends after `max_requests` sends or when `duration_s` has passed since the first one,
whichever comes first; each request then has at most `timeout_s` to finish, so a run never
outlasts duration_s + timeout_s.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from asrperf.errors import ConfigError
from asrperf.load.arrivals import Arrivals, schedule
from asrperf.load.client import RequestRecord, build, encode, send
from asrperf.load.workload import WorkClip

START_LEAD_S = 0.05  # the schedule starts this long after setup, so the first send is not late by setup time
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
SPIN_S = 0.003  # open loop: wake this long before each send time and wait the rest on the clock
KEEPALIVE_S = 300.0  # idle connections stay open this long (httpx's default, 5 s, closed them between sends)
# connections opened before the schedule starts: an open loop's first few (every idle connection in the
# pool costs each send a readiness check, so not more), one per client (streams, concurrency) up to 64
PREOPEN, CLIENT_PREOPEN = 4, 64
NORMAL, REALTIME = "normal", "fifo"  # LoadRun.policy: the scheduling thread's priority while it ran


@dataclass(frozen=True)
class Target:
    """Where the requests go: a base URL (http://host:port), the model name to send, an API key."""

    url: str
    model: str
    api_key: str | None = None

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith(TRANSCRIPTIONS_PATH) else base + TRANSCRIPTIONS_PATH


@dataclass(frozen=True)
class Bounds:
    """How long a run may go on, and how long each request may take."""

    max_requests: int = 1000
    duration_s: float = 60.0  # no send starts after this many seconds
    timeout_s: float = 60.0  # per request, from when it starts (after any in-flight slot wait)
    warmup_s: float = 0.0  # requests scheduled earlier than this are sent but left out of the metrics
    max_in_flight: int = 0  # open loop: at most this many requests at once (0: no limit); waits count as latency

    def validate(self) -> "Bounds":
        if self.max_requests < 1:
            raise ConfigError(f"--requests: {self.max_requests} must be >= 1")
        if not self.duration_s > 0:
            raise ConfigError(f"--duration: {self.duration_s} must be > 0 seconds")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout: {self.timeout_s} must be > 0 seconds")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(f"--warmup-s: {self.warmup_s} must be >= 0 and below --duration ({self.duration_s:g})")
        if self.max_in_flight < 0:
            raise ConfigError(f"--max-in-flight: {self.max_in_flight} must be >= 0 (0: no limit)")
        return self


@dataclass
class LoadRun:
    """What one run did: its pattern and bounds, and one record per request sent."""

    arrivals: Arrivals
    bounds: Bounds
    seed: int
    records: list[RequestRecord] = field(default_factory=list)
    started_at: float = 0.0  # wall clock (time.time()) of the schedule's zero
    wall_s: float = 0.0  # from the schedule's zero to the last answer
    policy: str = NORMAL  # the scheduling thread's priority: REALTIME where the OS permitted it


@contextmanager
def _no_collection_pauses() -> Iterator[None]:
    """No cyclic garbage collection while the run lasts: what the process holds is frozen (left out of
    later collections) and the collector is off, on again after. In a process holding many objects a
    full collection can stop the event loop for tens of ms (likely the cause of one 95 ms late send
    in benchmarks/serving.py, not traced); a run is bounded, so the garbage it leaves is too."""
    was = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


@contextmanager
def _send_priority() -> Iterator[str]:
    """The calling thread at the lowest real-time priority while the run lasts, where permitted."""
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(os.sched_get_priority_min(os.SCHED_FIFO)))
    except (AttributeError, OSError):  # not Linux-like, or no permission: normal priority
        yield NORMAL
        return
    try:
        yield REALTIME
    finally:
        os.sched_setscheduler(0, before[0], before[1])


async def _on_wire(record: RequestRecord, task: asyncio.Task, slots: asyncio.Semaphore | None,
                   limit: float) -> None:
    """Yield to the event loop until `record`'s request is on the wire, it ended, it waits for an
    in-flight slot, or the clock passes `limit` (monotonic), whichever comes first."""
    while record.sent_s is None and not task.done() and time.monotonic() < limit:
        if slots is not None and record.slot_s is None and slots.locked():
            return  # waiting for a slot: that wait is counted apart, and the schedule goes on
        await asyncio.sleep(0)


async def _until(deadline: float) -> None:
    """Return at `deadline` (monotonic): sleep to SPIN_S before it, then wait on the clock, yielding
    to the event loop meanwhile (a request started just before must not wait for this one's send)."""
    delay = deadline - SPIN_S - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    while time.monotonic() < deadline:
        await asyncio.sleep(0)


async def _preopen(client, url: str, n: int) -> None:
    """Open `n` keep-alive connections to the target ahead of the schedule: n concurrent GETs on the
    endpoint (a POST-only route answers at once, doing nothing); a failure here is left to the run."""
    import httpx

    async def one() -> None:
        try:
            await client.get(url, timeout=5.0)
        except httpx.HTTPError:
            pass

    await asyncio.gather(*(one() for _ in range(n)))


def _client(max_connections: int | None):
    import httpx

    # trust_env=False: no proxy from the environment ever sits between the generator and the server
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                          keepalive_expiry=KEEPALIVE_S)
    return httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits, trust_env=False)


def _connections_needed(arrivals: Arrivals, bounds: Bounds) -> int:
    """How many connections to open ahead of the schedule (see PREOPEN)."""
    wanted = (min(arrivals.clients, CLIENT_PREOPEN) if arrivals.clients
              else min(PREOPEN, bounds.max_in_flight or PREOPEN))
    return max(1, min(wanted, bounds.max_requests))


async def run_load_async(target: Target, clips: Sequence[WorkClip], arrivals: Arrivals, bounds: Bounds,
                         seed: int = 0) -> LoadRun:
    """One bounded run against `target`; see the module docstring for the two loops."""
    from asrperf.errors import require

    require("httpx", "asrperf load", "serve")
    bounds.validate()
    if not clips:
        raise ConfigError("no clips to send; check the source and n_clips")
    run = LoadRun(arrivals, bounds, seed)
    with _send_priority() as run.policy, _no_collection_pauses():
        await _run(run, target, clips)
    return run


async def _run(run: LoadRun, target: Target, clips: Sequence[WorkClip]) -> None:
    arrivals, bounds, seed = run.arrivals, run.bounds, run.seed
    async with _client(None) as client:
        bodies = [encode(client, target.endpoint, target.model, c.wav, target.api_key) for c in clips]
        await _preopen(client, target.endpoint, _connections_needed(arrivals, bounds))
        t0 = time.monotonic() + START_LEAD_S
        run.started_at = time.time() + START_LEAD_S

        def request_for(record: RequestRecord):
            return build(client, target.endpoint, bodies[record.clip_index], record, t0)

        async def one(record: RequestRecord, request, slots: asyncio.Semaphore | None) -> None:
            if slots is None:
                await send(client, request, record, bounds.timeout_s, t0)
                return
            async with slots:
                record.slot_s = time.monotonic() - t0
                await send(client, request, record, bounds.timeout_s, t0)

        def record_for(index: int, clip: int, scheduled_s: float) -> RequestRecord:
            c = clips[clip]
            rec = RequestRecord(index, clip, c.id, c.audio_s, scheduled_s, warmup=scheduled_s < bounds.warmup_s)
            run.records.append(rec)
            return rec

        if arrivals.open_loop:
            plan = schedule(arrivals, [c.audio_s for c in clips], bounds.max_requests, bounds.duration_s, seed)
            slots = asyncio.Semaphore(bounds.max_in_flight) if bounds.max_in_flight else None
            tasks = []
            for i, (offset, clip) in enumerate(plan):
                record = record_for(i, clip, offset)
                request = request_for(record)
                await _until(t0 + offset)
                task = asyncio.create_task(one(record, request, slots))
                tasks.append(task)
                following = plan[i + 1][0] if i + 1 < len(plan) else bounds.duration_s
                await _on_wire(record, task, slots, t0 + following - 2 * SPIN_S)
            await asyncio.gather(*tasks)
        else:
            counter = itertools.count()
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))

            async def closed_client() -> None:
                while (now := time.monotonic() - t0) < bounds.duration_s:
                    i = next(counter)
                    if i >= bounds.max_requests:
                        return
                    record = record_for(i, i % len(clips), now)
                    await one(record, request_for(record), None)

            await asyncio.gather(*(closed_client() for _ in range(arrivals.clients)))
        run.wall_s = max((r.done_s or 0.0) for r in run.records) if run.records else 0.0


def run_load(target: Target, clips: Sequence[WorkClip], arrivals: Arrivals, bounds: Bounds,
             seed: int = 0) -> LoadRun:
    """`run_load_async` in its own event loop (for callers that are not async)."""
    return asyncio.run(run_load_async(target, clips, arrivals, bounds, seed))
