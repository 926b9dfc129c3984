"""Shared fixtures: one small built-in corpus and one clip cache for the whole session.

Two options run the same tests elsewhere (benchmarks/gpu/run.sh uses both on the GPU machine):

- `--asrperf-device cuda` runs every test that takes the `device` fixture on that device; such
  tests are marked `device` at collection, so `-m "gpu or device"` selects the CUDA work.
- `--asrperf-cache DIR` starts the session cache from a copy of a cache built elsewhere (clips
  from `asrperf prepare`), for a machine without the tts extra that synthesises the corpus.
"""

import shutil
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asrperf")
    group.addoption("--asrperf-device", default="cpu",
                    help="device for the tests that take the `device` fixture: cpu, cuda or cuda:N (default cpu)")
    group.addoption("--asrperf-cache", default=None, metavar="DIR",
                    help="copy this asrperf cache (clips built by `asrperf prepare`) into the session cache")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "device: takes the `device` fixture (--asrperf-device picks cpu or cuda)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # a test that parametrises its own `device` argument does not use the fixture
        own = getattr(getattr(item, "callspec", None), "params", {})
        if "device" in getattr(item, "fixturenames", ()) and "device" not in own:
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The device of device-parametrised tests; asking for CUDA where there is none is an error, not a skip."""
    name = request.config.getoption("--asrperf-device")
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise pytest.UsageError(f"--asrperf-device: '{name}' is not a device; use cpu, cuda or cuda:N")
    if name != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(f"--asrperf-device {name}: torch sees no CUDA device here")
    return name


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, request) -> Path:
    path = tmp_path_factory.mktemp("asrperf-cache")
    seed = request.config.getoption("--asrperf-cache")
    if seed:
        if not Path(seed).is_dir():
            raise pytest.UsageError(f"--asrperf-cache: {seed} is not a directory")
        shutil.copytree(seed, path, dirs_exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_source() -> dict:
    # 30 Harvard sentences (~64 s of speech): enough for a few short clips and one 60 s clip
    return {"kind": "builtin", "n_sentences": 30}


@pytest.fixture(scope="session")
def builtin_clips(cache_dir, tiny_source):
    """`builtin_clips(length_s, n=1)`: `n` exact clips of the built-in corpus (tiny_source), cached."""
    from asrperf.data.audio import SAMPLE_RATE
    from asrperf.data.clips import ClipCache, prepare_clips
    from asrperf.data.sources import BuiltinSource

    src = BuiltinSource(cache_dir, n_sentences=tiny_source["n_sentences"])

    def clips(length_s: float, n: int = 1) -> list:
        return prepare_clips(lambda: src.utterances(SAMPLE_RATE), src.key, {}, length_s, n, ClipCache(cache_dir))[0]

    return clips


# one call per cell, no warm-up: enough to run the full measurement path, not to measure
FAST_TIMING = {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0, "max_calls": 1}


@pytest.fixture
def run_rows(tmp_path, cache_dir, tiny_source):
    """Run a small config through the runner (config -> run -> store) and return its rows.

    `run_rows(models, lengths=(5,), timing=FAST_TIMING, streaming=None, **run_keys)`: models as in
    [[models]], a [streaming] table, extra [run] keys as keywords; every cell must succeed (its error
    is shown if not).
    """
    from asrperf.config import config_from_dict
    from asrperf.results.store import Store
    from asrperf.run.runner import run

    def go(models: list, lengths=(5,), timing: dict = FAST_TIMING, streaming: dict | None = None, **run_keys) -> list:
        cfg = config_from_dict({
            "source": tiny_source, "models": models, "timing": timing, "streaming": streaming or {},
            "run": {"clip_lengths_s": list(lengths), "n_clips": 1, "store": str(tmp_path / "r.sqlite"),
                    "cache_dir": str(cache_dir), **run_keys},
        })
        summary = run(cfg)
        with Store(cfg.store) as s:
            rows = s.rows(summary.run_id)
        assert summary.failed == 0, [r.get("error") for r in rows]
        return rows

    return go


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright; skips where either is missing (.ci/run installs both)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(path) -> (page, errors, requests): a fresh 1280x800 page on a file:// report; errors
    holds console errors, page errors and any dialog, requests every URL the page asked for."""
    pages = []

    def go(path: Path):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        pages.append(page)
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        return page, errors, requests

    yield go
    for page in pages:
        page.close()
