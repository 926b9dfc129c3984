"""The server's Prometheus metrics (GET /metrics), in a registry of its own per app."""

from __future__ import annotations

from typing import Any

# seconds: from a 5 ms stub call to a minutes-long clip on a slow CPU
_TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class ServerMetrics:
    """Counters, gauges and histograms of one server; the batcher and the routes update them."""

    def __init__(self, model: str, queue_depth: Any, in_compute: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("asrperf_requests", "Transcription requests answered, by HTTP status code.",
                                ["code"], registry=r)
        self.audio_s = Counter("asrperf_audio_seconds", "Seconds of audio transcribed (requests answered 200).",
                               registry=r)
        self.request_s = Histogram("asrperf_request_duration_seconds",
                                   "Server-side time of a 200 request: body parsed to response ready.",
                                   buckets=_TIME_BUCKETS_S, registry=r)
        self.queue_s = Histogram("asrperf_queue_wait_seconds", "Time a request waited for the engine.",
                                 buckets=_TIME_BUCKETS_S, registry=r)
        self.dispatch_s = Histogram("asrperf_dispatch_delay_seconds",
                                    "Part of a request's queue wait after its engine call could have started "
                                    "(scheduling delay; grows when the machine is overloaded).",
                                    buckets=(0.0005, 0.001, 0.002, 0.005, *_TIME_BUCKETS_S[1:]), registry=r)
        self.compute_s = Histogram("asrperf_batch_compute_seconds", "Wall time of one engine call (one batch).",
                                   buckets=_TIME_BUCKETS_S, registry=r)
        self.batch_size = Histogram("asrperf_batch_size", "Requests per engine call.", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.batch_errors = Counter("asrperf_batch_errors", "Engine calls that raised.", registry=r)
        self.disconnects = Counter("asrperf_client_disconnects",
                                   "Requests whose client left before the answer (slot released).", registry=r)
        Gauge("asrperf_queue_depth", "Requests waiting for the engine.", registry=r).set_function(queue_depth)
        Gauge("asrperf_in_compute", "Requests in the engine call running now.", registry=r).set_function(in_compute)
        Gauge("asrperf_model_info", "The model this server runs (labels); always 1.", ["model"],
              registry=r).labels(model=model).set(1)

    def observe_batch(self, size: int, compute_s: float, ok: bool) -> None:
        """The batcher's observer: one engine call of `size` requests took `compute_s`."""
        self.batch_size.observe(size)
        self.compute_s.observe(compute_s)
        if not ok:
            self.batch_errors.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
