"""`asrperf load`: an asyncio load generator for OpenAI-compatible transcription servers.

It talks HTTP only and never imports an engine: the same code measures asrperf's own server
(started and stopped as a subprocess) and any other endpoint (`--url`).

    arrivals.py  arrival patterns (constant, poisson, gamma, concurrency:N, streams:N) and schedules
    workload.py  the clips (asrperf's sources and clip cache, as `asrperf run` uses) as upload bytes
    client.py    one request: multipart upload, wire send time, the server's timing headers
    generator.py open- and closed-loop runs, bounded in requests and time, latency from the schedule
    slo.py       the SLO syntax ("p99<=2s,goodput>=0.99") and its verdict with Wilson CIs
    metrics.py   one row per probe (flat, unit-named keys), the knee of a curve
    search.py    the maximum sustainable rate (bisection) and the sweep
    launch.py    asrperf's own server as a subprocess on 127.0.0.1
    record.py    rows into the results store; the rich table
    command.py   the `asrperf load` command (a thin typer wrapper)
"""
