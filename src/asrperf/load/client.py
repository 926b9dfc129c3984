"""One request to an OpenAI-compatible `/v1/audio/transcriptions`, and what it recorded.

All times are seconds on the monotonic clock, relative to the run's start. `sent_s` is when the
request headers started to go out on the wire (httpcore's trace), so it includes waiting for
a connection; the server's own times come from its X-Queue-Time-S, X-Dispatch-Time-S,
X-Compute-Time-S, X-Decode-Time-S and X-Batch-Size headers when it sends them (asrperf serve does).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

# outcome of a request, one word each (the row counts them)
OK, REJECTED, CLIENT_ERROR, SERVER_ERROR, TIMEOUT, CONNECTION_ERROR = (
    "ok", "rejected", "client_error", "server_error", "timeout", "connection_error")
OUTCOMES = (OK, REJECTED, CLIENT_ERROR, SERVER_ERROR, TIMEOUT, CONNECTION_ERROR)
_HEADERS = {"queue_s": "x-queue-time-s", "dispatch_s": "x-dispatch-time-s", "compute_s": "x-compute-time-s",
            "decode_s": "x-decode-time-s"}
_WIRE_EVENT = "http11.send_request_headers.started"  # httpcore trace: the first byte of this request


@dataclass
class RequestRecord:
    """One request of a load run: its schedule, its answer, and the server's times."""

    index: int
    clip_index: int
    clip_id: str
    audio_s: float
    scheduled_s: float  # when the schedule said to send it (closed loop: when its client was free)
    slot_s: float | None = None  # when it got an in-flight slot (= scheduled_s without --max-in-flight)
    sent_s: float | None = None  # its headers started on the wire
    done_s: float | None = None  # the answer was read in full, or the request failed / timed out
    status: int = 0  # HTTP status; 0 when no answer came
    outcome: str = ""
    queue_s: float | None = None
    dispatch_s: float | None = None  # the part of queue_s that is the server's scheduling delay
    compute_s: float | None = None
    decode_s: float | None = None
    batch_size: int | None = None
    retry_after_s: float | None = None
    text: str | None = None
    error: str = ""
    warmup: bool = False  # scheduled inside the warm-up window: sent, but left out of the metrics

    @property
    def latency_s(self) -> float | None:
        """End-to-end latency from the *scheduled* send time: free of coordinated omission."""
        return None if self.done_s is None else self.done_s - self.scheduled_s

    @property
    def latency_from_sent_s(self) -> float | None:
        """From the actual wire send: what a generator that ignores its schedule would report."""
        return None if self.done_s is None or self.sent_s is None else self.done_s - self.sent_s

    @property
    def lateness_s(self) -> float | None:
        """The generator's own delay: wire send minus the scheduled time, less any in-flight slot wait."""
        if self.sent_s is None:
            return None
        return self.sent_s - (self.slot_s if self.slot_s is not None else self.scheduled_s)

    @property
    def slot_wait_s(self) -> float:
        return 0.0 if self.slot_s is None else self.slot_s - self.scheduled_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_s": self.latency_s, "lateness_s": self.lateness_s}


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line[:limit]


def _read_answer(record: RequestRecord, response: Any) -> None:
    record.status = response.status_code
    for key, header in _HEADERS.items():
        setattr(record, key, _float(response.headers.get(header)))
    batch = response.headers.get("x-batch-size")
    record.batch_size = int(batch) if batch and batch.isdigit() else None
    if response.status_code == 200:
        try:
            record.text = str(response.json()["text"])
            record.outcome = OK
        except (ValueError, KeyError, TypeError):
            record.outcome, record.error = SERVER_ERROR, f"200 without a JSON 'text': {_one_line(response.text)}"
        return
    record.outcome = (REJECTED if response.status_code == 429 else
                      CLIENT_ERROR if response.status_code < 500 else SERVER_ERROR)
    record.retry_after_s = _float(response.headers.get("retry-after"))
    try:
        record.error = _one_line(str(response.json()["error"]["message"]))
    except (ValueError, KeyError, TypeError):
        record.error = _one_line(response.text)


@dataclass(frozen=True)
class Body:
    """One clip's POST, encoded once: the multipart bytes and the headers that go with them."""

    content: bytes
    headers: dict[str, str]


def encode(client: Any, url: str, model: str, wav: bytes, api_key: str | None) -> Body:
    """The multipart body of one clip (httpx encodes it), reused by every request of that clip."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = client.build_request("POST", url, files={"file": ("clip.wav", wav, "audio/wav")},
                                   data={"model": model, "response_format": "json"}, headers=headers)
    return Body(request.read(), {**headers, "Content-Type": request.headers["content-type"]})


def build(client: Any, url: str, body: Body, record: RequestRecord, t0: float) -> Any:
    """The POST of one clip from its encoded `body` (no encoding work left for the send); its trace
    hook stamps `record.sent_s` when the request reaches the wire."""

    async def trace(event: str, info: dict) -> None:  # httpcore's async interface awaits its trace hook
        if event == _WIRE_EVENT and record.sent_s is None:
            record.sent_s = time.monotonic() - t0

    return client.build_request("POST", url, content=body.content, headers=body.headers,
                                extensions={"trace": trace})


async def send(client: Any, request: Any, record: RequestRecord, timeout_s: float, t0: float) -> RequestRecord:
    """Send a `build` request and fill `record` in; never raises for an HTTP or network failure."""
    import httpx

    try:
        response = await asyncio.wait_for(client.send(request), timeout_s)
        record.done_s = time.monotonic() - t0
        _read_answer(record, response)
    except (asyncio.TimeoutError, httpx.TimeoutException):  # wait_for cancels the request: httpx closes it
        record.done_s = time.monotonic() - t0
        record.outcome, record.error = TIMEOUT, f"no answer within {timeout_s:g} s (--timeout)"
    except httpx.HTTPError as exc:
        record.done_s = time.monotonic() - t0
        record.outcome, record.error = CONNECTION_ERROR, _one_line(f"{type(exc).__name__}: {exc}")
    return record
