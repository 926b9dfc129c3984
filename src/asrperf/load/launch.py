"""A server as a real subprocess on 127.0.0.1: started, waited for, and stopped with a drain.

The child gets `--host 127.0.0.1 --port 0 --port-file F`; it writes F once it accepts
connections, so the parent never races its startup (loading a model can take minutes). Stopping
sends SIGTERM (the server drains in-flight requests) and kills only after `stop_timeout_s`.
With `die_with_parent` (Linux), the kernel sends the child SIGTERM when its parent dies, so a
parent killed with SIGKILL (a cell past its timeout) still leaves no server behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrperf.errors import AsrperfError

LOOPBACK = "127.0.0.1"
# The niceness of a server that asrperf starts beside its own load generator: under contention the
# generator's sends then go out on time (its lateness, measured on every row) instead of waiting for
# the server's compute threads to yield a core. With the machine otherwise idle it changes nothing:
# niceness only weighs runnable threads against each other. /health reports the server's niceness.
SERVER_NICE = 10
_LOG_TAIL_LINES = 20


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def asrperf_serve_argv(serve_args: Sequence[str]) -> list[str]:
    """The `asrperf serve` command line in this interpreter (host, port and port file are added)."""
    return [sys.executable, "-m", "asrperf", "serve", *serve_args]


def _parent_death_signal():
    """A preexec_fn asking the kernel for SIGTERM when the parent dies (Linux prctl); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork: the child only calls it
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


def _preexec(die_with_parent: bool, nice: int):
    """The child's setup before exec: its niceness (inherited by every thread it starts), the death signal."""
    arm = _parent_death_signal() if die_with_parent else None
    if not nice and arm is None:
        return None

    def setup() -> None:
        if nice:
            os.nice(nice)
        if arm is not None:
            arm()

    return setup


@contextmanager
def server_process(command: Sequence[str], startup_timeout_s: float = 900.0, stop_timeout_s: float = 90.0,
                   env: dict[str, str] | None = None, die_with_parent: bool = False,
                   nice: int = 0) -> Iterator[RunningServer]:
    """Start `command` (a server accepting --host/--port/--port-file), yield it once it listens;
    `nice` raises its niceness (SERVER_NICE when the load generator shares the machine)."""
    with tempfile.TemporaryDirectory(prefix="asrperf-serve-") as tmp:
        port_file, log_path = Path(tmp) / "port", Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([*command, "--host", LOOPBACK, "--port", "0", "--port-file", str(port_file)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})},
                                    preexec_fn=_preexec(die_with_parent, nice))
        server = RunningServer("", proc, log_path)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not port_file.is_file():
                if proc.poll() is not None:
                    raise AsrperfError(f"the server exited with code {proc.returncode} before listening:\n"
                                       f"{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise AsrperfError(f"the server did not listen within {startup_timeout_s:g} s; its log:\n"
                                       f"{server.log_tail()}")
                time.sleep(0.05)
            server.url = f"http://{LOOPBACK}:{int(port_file.read_text())}"
            yield server
        finally:
            stop(proc, stop_timeout_s)


def stop(proc: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM (graceful drain), then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def health(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """An asrperf server's /health (its model, engine and batcher settings); None from other servers."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s, trust_env=False)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, json.JSONDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) and "max_batch_size" in body else None


def wait_idle(url: str, timeout_s: float = 60.0) -> bool:
    """Wait until an asrperf server's queue is empty and its engine idle (between probes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = health(url)
        if h is None or (h.get("queued", 0) == 0 and h.get("in_compute", 0) == 0):
            return True
        time.sleep(0.05)
    return False
