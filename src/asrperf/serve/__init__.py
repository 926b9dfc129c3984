"""`asrperf serve`: an OpenAI-compatible transcription server around one asrperf engine.

    settings.py  what the server accepts (limits, batcher, binding), validated in one place
    batcher.py   the dynamic batcher: a bounded queue and the one thread that calls the engine
    app.py       the FastAPI routes: /v1/audio/transcriptions, /v1/models, /health, /metrics
    server.py    loading the engine (registry + catalog), binding, uvicorn, graceful drain
    command.py   the `asrperf serve` command (a thin typer wrapper)

The heavy web stack (fastapi, uvicorn, prometheus_client) sits behind the `serve` extra and is
imported only when a server starts.
"""
