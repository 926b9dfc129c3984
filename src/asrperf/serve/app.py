"""The HTTP API: OpenAI's `POST /v1/audio/transcriptions`, plus `/v1/models`, `/health`, `/metrics`.

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a one-line
message that names the problem and the fix. Every answered transcription carries the server's
own times in headers (seconds): X-Queue-Time-S (waiting for the engine), X-Dispatch-Time-S (the
part of the queue time after the engine call could have started: the server's scheduling delay),
X-Compute-Time-S (the engine call, shared by its batch), X-Decode-Time-S (decoding and resampling
the upload) and X-Batch-Size (requests in that engine call).
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures, whose types are
# imported inside create_app (fastapi is an optional extra), at definition time
import asyncio
import hmac
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from asrperf.data.audio import SAMPLE_RATE, decode_audio_bytes
from asrperf.errors import DataError
from asrperf.serve.batcher import Batcher, QueueFull, ShuttingDown, TranscribeFn
from asrperf.serve.metrics import ServerMetrics
from asrperf.serve.settings import RESPONSE_FORMATS, ServerSettings

HEADER_QUEUE_S = "X-Queue-Time-S"
HEADER_DISPATCH_S = "X-Dispatch-Time-S"
HEADER_COMPUTE_S = "X-Compute-Time-S"
HEADER_DECODE_S = "X-Decode-Time-S"
HEADER_BATCH_SIZE = "X-Batch-Size"
# form fields of OpenAI's API this server understands; any other one is refused by name, never
# ignored (a client sending `prompt` or `language` would otherwise believe it had an effect)
_FIELDS = ("file", "model", "response_format", "temperature")
# Uploads up to this size are decoded on the event loop (well under a millisecond for a 15 s
# float WAV); larger ones in a thread, so a long file never stalls other requests. Two thread
# hand-offs cost more than a small decode, and on a loaded machine each costs milliseconds.
INLINE_DECODE_BYTES = 1 << 20
_CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; the client never sees it


@dataclass(frozen=True)
class ServedModel:
    """What this server runs, as /health and /v1/models report it."""

    name: str  # the `model` form field clients must send: the name `asrperf serve -m` was given
    engine: str
    dtype: str
    variant: str
    device: str
    english_only: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # the engine's provenance (Engine.info())


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


def _error_response(status: int, message: str, kind: str, param: str | None = None,
                    headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _wait_disconnect(receive: Callable) -> None:
    # once the body is read, the server's receive() returns only when the client disconnects
    # (or the response is complete, which cannot happen while the handler still waits)
    while (await receive())["type"] != "http.disconnect":
        pass


def _check_auth(authorization: str | None, key: str) -> None:
    scheme, _, token = (authorization or "").partition(" ")
    # compare_digest takes time independent of where the strings differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                       "authentication_error", headers={"WWW-Authenticate": "Bearer"})


def create_app(transcribe: TranscribeFn, served: ServedModel, settings: ServerSettings):
    """The FastAPI app; its lifespan starts the batcher's worker and, on shutdown, drains it."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    api_key = settings.api_key()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(transcribe, settings.max_batch_size, settings.max_wait_ms / 1000, settings.max_queue)
        metrics = ServerMetrics(served.name, lambda: batcher.queued, lambda: batcher.in_compute)
        batcher.on_batch = metrics.observe_batch
        state.update(batcher=batcher, metrics=metrics, started=time.time())
        yield
        # uvicorn has already waited for in-flight requests (drain_timeout_s); finish what is queued
        await asyncio.to_thread(batcher.close, settings.drain_timeout_s)

    app = FastAPI(title="asrperf serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        state["metrics"].requests.labels(code=str(exc.status)).inc()
        return _error_response(exc.status, exc.message, exc.kind, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown routes, wrong methods
        return _error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                               "invalid_request_error", headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        b = state["batcher"]
        return {"status": "ok", "model": served.name, "engine": served.engine, "dtype": served.dtype,
                "variant": served.variant, "device": served.device, "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue,
                "max_audio_s": settings.max_audio_s, "max_upload_bytes": settings.max_upload_bytes,
                "keep_alive_s": settings.keep_alive_s,
                "queued": b.queued, "in_compute": b.in_compute, "batches": b.batches,
                "uptime_s": time.time() - state["started"], "nice": os.nice(0), "engine_info": served.info}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state["metrics"].render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        if api_key is not None:
            _check_auth(request.headers.get("authorization"), api_key)
        return {"object": "list", "data": [{"id": served.name, "object": "model", "owned_by": "asrperf"}]}

    async def read_form(request: Request) -> tuple[UploadFile, str]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise ApiError(411, "the request has no Content-Length; send the multipart body with its length")
        if int(length) > settings.max_upload_bytes:
            raise ApiError(413, f"the request body is {int(length):,} bytes, over this server's limit of "
                                f"{settings.max_upload_bytes:,} bytes (--max-upload-mb); send a shorter or "
                                f"compressed file")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send the audio as multipart/form-data with the fields 'file' and 'model'")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # starlette's MultiPartException, python-multipart parse errors
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ApiError(400, f"the multipart body cannot be parsed ({reason})") from exc
        for key in form.keys():
            if key not in _FIELDS:
                raise ApiError(400, f"the field '{key}' is not supported by asrperf serve (it decodes greedily at "
                                    f"temperature 0); remove it. Supported: {', '.join(_FIELDS)}", param=key)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "the multipart field 'file' (the audio file) is missing or is not a file", param="file")
        model = form.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, f"the field 'model' is missing; send model={served.name}", param="model")
        if model != served.name:
            raise ApiError(404, f"the model '{model}' is not served here; this server runs '{served.name}'",
                           "model_not_found", param="model")
        temperature = form.get("temperature")
        if temperature not in (None, "", "0", "0.0"):
            raise ApiError(400, f"temperature {temperature!r} is not supported: this server decodes greedily; "
                                "send 0 or leave it out", param="temperature")
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format '{fmt}' is not supported; use one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        return upload, str(fmt)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        arrived = time.perf_counter()
        if api_key is not None:
            _check_auth(request.headers.get("authorization"), api_key)
        upload, fmt = await read_form(request)
        data = await upload.read()
        await upload.close()
        if len(data) > settings.max_upload_bytes:  # a Content-Length that lied
            raise ApiError(413, f"the file is over this server's limit of {settings.max_upload_bytes:,} bytes")
        t0 = time.perf_counter()
        item = f"file '{upload.filename or 'upload'}'"
        try:
            if len(data) <= INLINE_DECODE_BYTES:
                audio = decode_audio_bytes(data, item)
            else:
                audio = await asyncio.to_thread(decode_audio_bytes, data, item)
        except DataError as exc:
            raise ApiError(400, str(exc), param="file") from exc
        decode_s = time.perf_counter() - t0
        audio_s = len(audio) / SAMPLE_RATE
        if audio_s > settings.max_audio_s:
            raise ApiError(400, f"the audio is {audio_s:.1f} s long, over this server's limit of "
                                f"{settings.max_audio_s:g} s (--max-audio-s); send a shorter clip", param="file")
        batcher, metrics = state["batcher"], state["metrics"]
        try:
            job = batcher.submit(audio)
        except QueueFull as exc:
            raise ApiError(429, f"the server's queue is full ({settings.max_queue} requests waiting); retry after "
                                f"{exc.retry_after_s} s", "rate_limit_error",
                           headers={"Retry-After": str(exc.retry_after_s)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down; send the request to another instance",
                           "server_error") from None
        disconnect = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({job.future, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            if not job.future.done():  # the client left, or this handler was cancelled: free the slot
                batcher.cancel(job)
                job.future.cancel()
        if job.future not in done:
            metrics.disconnects.inc()
            return Response(status_code=_CLIENT_CLOSED)
        result = job.future.result()
        if result.error:
            raise ApiError(500, f"the engine failed on this input ({result.error})", "server_error")
        headers = {HEADER_QUEUE_S: f"{result.queue_s:.6f}", HEADER_DISPATCH_S: f"{result.dispatch_s:.6f}",
                   HEADER_COMPUTE_S: f"{result.compute_s:.6f}",
                   HEADER_DECODE_S: f"{decode_s:.6f}", HEADER_BATCH_SIZE: str(result.batch_size)}
        metrics.requests.labels(code="200").inc()
        metrics.audio_s.inc(audio_s)
        metrics.queue_s.observe(result.queue_s)
        metrics.dispatch_s.observe(result.dispatch_s)
        metrics.request_s.observe(time.perf_counter() - arrived)
        if fmt == "text":
            return PlainTextResponse(result.text, headers=headers)
        body: dict[str, Any] = {"text": result.text}
        if fmt == "verbose_json":  # no segments: the engines decode without timestamps
            body.update(task="transcribe", duration=audio_s, queue_s=result.queue_s, compute_s=result.compute_s,
                        batch_size=result.batch_size, **({"language": "english"} if served.english_only else {}))
        return JSONResponse(body, headers=headers)

    return app
