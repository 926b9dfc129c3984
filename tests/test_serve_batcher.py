"""The dynamic batcher on its own: batch formation, the bounded queue, cancellation, error isolation."""

import asyncio
import threading
import time

import numpy as np
import pytest

from asrperf.errors import ConfigError
from asrperf.serve.batcher import Batcher, QueueFull, ShuttingDown
from asrperf.serve.settings import ServerSettings


def _audio(n: int = 16) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


class Recorder:
    """A transcribe function that records batch sizes; it can be held on an event, or fail on a marker."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.hold = hold

    def __call__(self, audios):
        self.sizes.append(len(audios))
        if self.hold is not None:
            self.hold.wait(5)
        if any(len(a) == 1 for a in audios):
            raise ValueError("one-sample input\nsecond line")
        return [f"n={len(a)}" for a in audios]


def test_jobs_arriving_together_share_a_call_up_to_the_max():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=4, max_wait_s=0.2, max_queue=16)
        jobs = [b.submit(_audio(10 + i)) for i in range(6)]
        results = [await j.future for j in jobs]
        b.close(5)
        return results

    results = asyncio.run(main())
    assert rec.sizes == [4, 2]
    assert [r.text for r in results] == [f"n={10 + i}" for i in range(6)]
    assert [r.batch_size for r in results] == [4] * 4 + [2] * 2
    # the second batch waited for the first call: its queue time covers it
    assert results[4].queue_s >= results[0].compute_s


def test_dispatch_delay_is_the_wait_after_the_engine_was_free():
    hold = threading.Event()
    rec = Recorder(hold)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, max_queue=16)
        first = b.submit(_audio())
        while b.in_compute == 0:
            await asyncio.sleep(0.001)
        second = b.submit(_audio())
        await asyncio.sleep(0.2)
        hold.set()
        results = [await first.future, await second.future]
        b.close(5)
        return results

    first, second = asyncio.run(main())
    # the second job queued 0.2 s behind a held call, but started as soon as the engine was free
    assert second.queue_s >= 0.2 and second.dispatch_s < 0.1 and second.dispatch_s <= second.queue_s
    assert first.dispatch_s <= first.queue_s < 0.1


def test_batching_off_runs_every_job_alone():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, max_queue=16)
        jobs = [b.submit(_audio()) for _ in range(3)]
        [await j.future for j in jobs]
        b.close(5)

    asyncio.run(main())
    assert rec.sizes == [1, 1, 1]


def test_a_lone_job_waits_at_most_max_wait():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=8, max_wait_s=0.05, max_queue=16)
        t0 = time.perf_counter()
        result = await b.submit(_audio()).future
        b.close(5)
        return result, time.perf_counter() - t0

    result, elapsed = asyncio.run(main())
    assert result.queue_s == pytest.approx(0.05, abs=0.04)  # calibrated: a loaded 2-core machine wakes late
    assert elapsed < 1.0


def test_a_full_queue_refuses_with_a_retry_hint_and_a_cancelled_job_frees_its_slot():
    hold = threading.Event()
    rec = Recorder(hold)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, max_queue=2)
        running = b.submit(_audio())
        while b.in_compute == 0:  # the worker has taken it
            await asyncio.sleep(0.001)
        queued = [b.submit(_audio()), b.submit(_audio())]
        with pytest.raises(QueueFull) as full:
            b.submit(_audio())
        assert full.value.retry_after_s >= 1
        assert b.cancel(queued[0]) is True and b.queued == 1
        assert b.cancel(running) is False  # the engine has it: it runs to the end
        extra = b.submit(_audio())  # the freed slot takes a new job
        hold.set()
        done = [await j.future for j in (running, queued[1], extra)]
        b.close(5)
        with pytest.raises(ShuttingDown):
            b.submit(_audio())
        return done

    done = asyncio.run(main())
    assert all(r.text for r in done) and rec.sizes == [1, 1, 1]


def test_an_engine_error_fails_only_its_own_job_and_the_worker_survives():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=4, max_wait_s=0.1, max_queue=16)
        jobs = [b.submit(_audio(5)), b.submit(_audio(1)), b.submit(_audio(7))]
        results = [await j.future for j in jobs]
        after = await b.submit(_audio(9)).future
        b.close(5)
        return results, after

    results, after = asyncio.run(main())
    assert rec.sizes[0] == 3 and rec.sizes[1:4] == [1, 1, 1]  # the failed batch is re-run one by one
    assert results[0].text == "n=5" and results[2].text == "n=7"
    assert results[1].error == "ValueError: one-sample input" and results[1].text == ""
    assert after.text == "n=9"


def test_close_finishes_what_is_queued():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=2, max_wait_s=0.0, max_queue=16)
        jobs = [b.submit(_audio()) for _ in range(5)]
        await asyncio.to_thread(b.close, 5)
        return [await j.future for j in jobs]

    assert len(asyncio.run(main())) == 5 and sum(rec.sizes) == 5


@pytest.mark.parametrize("change, fragment", [
    ({"max_batch_size": 0}, "--max-batch-size"), ({"max_queue": 0}, "--max-queue"), ({"port": 70000}, "--port"),
    ({"max_wait_ms": -1}, "--max-wait-ms"), ({"api_key_env": "ASRPERF_TEST_UNSET_KEY"}, "unset or empty"),
])
def test_settings_refuse_impossible_values(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ServerSettings(**change).validate()


def test_the_server_binds_loopback_unless_told():
    assert ServerSettings().host == "127.0.0.1"
