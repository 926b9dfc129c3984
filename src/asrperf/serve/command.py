"""`asrperf serve`: the typer command (cli.py registers it). Heavy imports happen inside."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from asrperf.config import WEIGHTS_CHOICES
from asrperf.errors import ConfigError


def serve_command(
    model: str = typer.Option("whisper-tiny.en", "--model", "-m", help="Catalog name, Hub id or local checkpoint dir."),
    engine: str = typer.Option("transformers", "--engine", "-e", help="transformers | ct2 | ort | nemo."),
    weights: str = typer.Option("auto", help="auto | real | random."),
    dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16; int8* (ct2); int8 (ort)."),
    quant: str = typer.Option("none", help="none | int8_dynamic | int8_weight_only (engine transformers)."),
    attn: str = typer.Option("sdpa", help="sdpa | eager | flash_attention_2 (engine transformers)."),
    compile_: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model (engine transformers)."),
    longform: str = typer.Option("sequential", help="sequential | batched: Whisper audio over 30 s."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, help="CPU threads for the engine (0 = all usable cores)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, help="TCP port (0 = a free one, printed and written to --port-file)."),
    port_file: Optional[Path] = typer.Option(None, help="Write the bound port here once the server accepts requests."),
    max_batch_size: int = typer.Option(8, help="Requests per engine call (1 = batching off)."),
    max_wait_ms: float = typer.Option(10.0, help="How long a batch's first request waits for more."),
    max_queue: int = typer.Option(64, help="Requests waiting for the engine before 429 + Retry-After."),
    max_upload_mb: float = typer.Option(25.0, help="Largest request body in MiB (larger: 413)."),
    max_audio_s: float = typer.Option(600.0, help="Longest audio in seconds (longer: 400)."),
    api_key_env: str = typer.Option("", help="Require 'Authorization: Bearer $NAME' (constant-time compare, 401)."),
    drain_timeout_s: float = typer.Option(60.0, help="On SIGTERM/SIGINT, time in-flight requests get to finish."),
    keep_alive_s: float = typer.Option(75.0, help="How long an idle client connection stays open (seconds)."),
    cache_dir: Path = typer.Option(Path(".asrperf-cache"), help="Where converted weights are cached."),
    plugin: list[str] = typer.Option([], "--plugin", help="Import this module first (one that registers an engine; repeatable)."),
) -> None:
    """Serve one model over HTTP: OpenAI's POST /v1/audio/transcriptions, /health, /metrics."""
    import importlib

    from asrperf.config import ModelConfig
    from asrperf.run.plan import usable_cores

    for module in plugin:  # before the engine name is checked: the module registers it
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--plugin {module}: cannot import it ({exc}); check PYTHONPATH") from None
    from asrperf.serve.server import serve
    from asrperf.serve.settings import ServerSettings

    if weights not in WEIGHTS_CHOICES:  # dtype and options: check_variant, against the engine's declaration
        raise ConfigError(f"--weights: '{weights}' is not one of {', '.join(WEIGHTS_CHOICES)}")
    if threads < 0:
        raise ConfigError(f"--threads: {threads} must be >= 0 (0 = all usable cores)")
    settings = ServerSettings(host=host, port=port, port_file=str(port_file or ""), max_batch_size=max_batch_size,
                              max_wait_ms=max_wait_ms, max_queue=max_queue,
                              max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_audio_s=max_audio_s,
                              api_key_env=api_key_env, drain_timeout_s=drain_timeout_s,
                              keep_alive_s=keep_alive_s).validate()
    m = ModelConfig(name=model, engine=engine, weights=weights, dtype=dtype, quant=quant, attn=attn, compile=compile_,
                    longform=longform)
    serve(m, device, threads or usable_cores(), settings, cache_dir,
          announce=lambda line: print(line, flush=True))
