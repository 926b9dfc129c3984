"""What the server accepts and how it batches: one frozen dataclass, checked in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

from asrperf.errors import ConfigError

# OpenAI's audio API refuses uploads over 25 MB; the same default keeps clients' expectations
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
RESPONSE_FORMATS = ("json", "text", "verbose_json")


@dataclass(frozen=True)
class ServerSettings:
    """Binding, request limits and the dynamic batcher of one `asrperf serve` process."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a benchmark server is not a public service
    port: int = 8000  # 0: any free port (printed, and written to `port_file`)
    port_file: str = ""  # where the bound port is written once the server accepts connections
    max_batch_size: int = 8  # requests the batcher puts in one engine call (1: batching off)
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for more to arrive
    max_queue: int = 64  # requests waiting for the engine; one more gets 429 + Retry-After
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # larger request bodies get 413
    max_audio_s: float = 600.0  # longer audio gets 400
    api_key_env: str = ""  # environment variable holding the Bearer key; "" = no authentication
    drain_timeout_s: float = 60.0  # on SIGTERM/SIGINT, how long in-flight requests may take to finish
    keep_alive_s: float = 75.0  # an idle connection stays open this long (uvicorn's 5 s made clients reconnect)

    def validate(self) -> "ServerSettings":
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: {self.port} is not a TCP port (0-65535; 0 picks a free one)")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size: {self.max_batch_size} must be >= 1 (1 turns batching off)")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms: {self.max_wait_ms} must be >= 0")
        if self.max_queue < 1:
            raise ConfigError(f"--max-queue: {self.max_queue} must be >= 1")
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"--max-upload-mb: {self.max_upload_bytes} bytes is too small for any audio file")
        if self.max_audio_s <= 0:
            raise ConfigError(f"--max-audio-s: {self.max_audio_s} must be > 0")
        if self.keep_alive_s <= 0:
            raise ConfigError(f"--keep-alive-s: {self.keep_alive_s} must be > 0")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"--drain-timeout-s: {self.drain_timeout_s} must be >= 0")
        if self.api_key_env:
            self.api_key()
        return self

    def api_key(self) -> str | None:
        """The Bearer key, read from `api_key_env` at startup; None when authentication is off."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(f"--api-key-env {self.api_key_env}: that environment variable is unset or empty; "
                              f"export {self.api_key_env}=<key> or drop --api-key-env")
        return key
