"""Start a server: load the engine through asrperf's catalog and registry, bind, serve, drain.

The engine is loaded and warmed up before the socket is bound, so the first client request never
pays for the load. The bound address is announced on stdout (and written to `port_file`) only
once uvicorn accepts connections: a client that waits for the port never races the startup.
SIGTERM or SIGINT stops accepting connections, lets in-flight requests finish (up to
`drain_timeout_s`), drains the batcher's queue, and returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from asrperf.config import ModelConfig, check_variant
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.base import Engine
from asrperf.errors import ConfigError, require
from asrperf.serve.app import ServedModel, create_app
from asrperf.serve.batcher import TranscribeFn
from asrperf.serve.settings import ServerSettings

WARMUP_AUDIO_S = 1.0  # one call on this much silence before serving: first-call costs stay out of requests


def engine_transcriber(engine: Engine) -> TranscribeFn:
    """The batcher's call: the engine's timed call on 16 kHz waveforms, texts out."""

    def transcribe(audios: list[np.ndarray]) -> list[str]:
        texts = engine.transcribe(audios, SAMPLE_RATE).texts
        engine.synchronize()
        return texts

    return transcribe


def load_engine(model: ModelConfig, device: str, threads: int, cache_dir: str | Path) -> tuple[Engine, ServedModel]:
    """Resolve, create and load `model` with its dtype and variant, sized to `threads` CPU threads."""
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.run.worker import set_threads

    check_variant(model, device)
    spec = dataclasses.replace(resolve(model.name), options=model.options)
    set_threads(threads)
    engine = create(model.engine, cache_dir)
    engine.load(spec, model.weights, model.dtype, device)
    set_threads(threads)  # torch may have been imported by the load itself
    t0 = time.perf_counter()
    engine_transcriber(engine)([np.zeros(int(WARMUP_AUDIO_S * SAMPLE_RATE), dtype=np.float32)])
    info = {**engine.info(), "warmup_call_s": time.perf_counter() - t0, "threads": threads}
    served = ServedModel(name=model.name, engine=model.engine, dtype=model.dtype, variant=model.variant,
                         device=device, english_only=spec.english_only, info=info)
    return engine, served


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                          f"(0 picks a free one) or --host") from exc
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _write_port_file(path: str, port: int) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)  # a reader never sees a half-written file


def run_server(transcribe: TranscribeFn, served: ServedModel, settings: ServerSettings,
               announce: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM/SIGINT, then drain; `announce` gets one line with the URL once ready."""
    require("fastapi", "asrperf serve", "serve")
    uvicorn = require("uvicorn", "asrperf serve", "serve")
    require("prometheus_client", "asrperf serve", "serve", package="prometheus-client")
    require("multipart", "asrperf serve", "serve", package="python-multipart")
    settings.validate()
    app = create_app(transcribe, served, settings)
    sock = _bind(settings.host, settings.port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=settings.drain_timeout_s,
                            timeout_keep_alive=settings.keep_alive_s)
    server = uvicorn.Server(config)

    async def announce_when_ready() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        if settings.port_file:
            _write_port_file(settings.port_file, sock.getsockname()[1])
        announce(f"asrperf serve: {served.name} ({served.engine}, {served.variant}, {served.device}) on "
                 f"{_url(sock)}; max_batch_size {settings.max_batch_size}, max_wait_ms {settings.max_wait_ms:g}, "
                 f"max_queue {settings.max_queue}")

    async def main() -> None:
        ready = asyncio.create_task(announce_when_ready())
        await server.serve(sockets=[sock])
        ready.cancel()

    # uvicorn handles SIGINT/SIGTERM while serving and re-raises the signal afterwards; these
    # handlers absorb that re-raise, so a drained server returns normally (exit code 0)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def serve(model: ModelConfig, device: str, threads: int, settings: ServerSettings, cache_dir: str | Path,
          announce: Callable[[str], None] = print) -> None:
    """`asrperf serve`: load `model` through asrperf's registry and catalog, then serve it."""
    settings.validate()
    engine, served = load_engine(model, device, threads, cache_dir)
    run_server(engine_transcriber(engine), served, settings, announce)
