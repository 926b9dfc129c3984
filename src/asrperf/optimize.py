"""`asrperf optimize MODEL`: measure the variants that apply on this device, gate each on accuracy,
and keep the fastest one whose WER stays within a budget of the fp32 reference.

Every candidate is an ordinary model entry of one run (same clips, same timer, same store), so the
comparison is side by side and the run can be reported, compared and resumed like any other.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrperf.config import LONGFORM_ENGINES, ModelConfig, RunConfig, dump_config
from asrperf.errors import ConfigError

DEFAULT_WER_BUDGET = 0.005  # +0.5 WER points, absolute
WHISPERCPP_DTYPES = ("fp16", "q8_0", "q5_1", "q5_0")


@dataclass(frozen=True)
class Trial:
    """One measured candidate and its verdict."""

    model: ModelConfig
    row: dict[str, Any]
    speedup: float | None  # reference p50 / this p50
    wer_delta: float | None
    wer_ci: tuple[float, float] | None
    n_worse: int | None
    verdict: str  # "reference", "within budget", "over budget", "accuracy not checked", "failed"


@dataclass(frozen=True)
class OptimizeResult:
    run_id: str
    store: Path
    trials: list[Trial]
    winner: Trial | None
    wer_budget: float
    note: str  # e.g. why accuracy could not be gated


def _cpu_has_bf16() -> bool:
    from asrperf.results.env import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def _ct2_types(device: str) -> set[str]:
    if importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("faster_whisper") is None:
        return set()
    import ctranslate2

    try:
        return set(ctranslate2.get_supported_compute_types("cuda" if device.startswith("cuda") else "cpu"))
    except RuntimeError:  # a CUDA device this ctranslate2 build or driver cannot use: no ct2 candidates
        return set()


# CTranslate2 compute type -> asrperf dtype name
_CT2_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8",
               "int8_float32": "int8_float32", "int8_float16": "int8_float16", "int8_bfloat16": "int8_bfloat16"}


def candidates(name: str, device: str, weights: str = "auto", engines: tuple[str, ...] = (),
               compile: bool = True, long_audio: bool = False) -> list[ModelConfig]:
    """The variants worth trying for `name` on `device`; the fp32 transformers reference comes first.

    `engines` restricts the engines tried (default: every installed engine that runs this family).
    `long_audio` (clips over 30 s) adds batched long-form windows to the Whisper variants that
    support it (see the comment at the list).
    """
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import supports

    spec = resolve(name)
    cuda = device.startswith("cuda")
    want = set(engines) or {"transformers", "ct2", "ort", "whispercpp"}
    ref = ModelConfig(name=name, engine="transformers", weights=weights, dtype="fp32")
    out = [ref]
    if "transformers" in want:
        tf = dataclasses.replace
        if cuda:
            out += [tf(ref, dtype="fp16"), tf(ref, dtype="bf16")]
            if compile:
                out += [tf(ref, dtype="fp16", compile=True), tf(ref, dtype="fp16", compile=True, cuda_graphs=True)]
        else:
            out += [tf(ref, attn="eager"), tf(ref, quant="int8_dynamic")]
            if _cpu_has_bf16():
                out.append(tf(ref, dtype="bf16"))
            if compile:
                out.append(tf(ref, compile=True))
    if "ct2" in want and supports("ct2", spec.family):
        types = _ct2_types(device)
        order = ("float16", "int8_float16", "int8") if cuda else ("float32", "int8", "int8_float32", "int8_bfloat16")
        out += [ModelConfig(name=name, engine="ct2", weights=weights, dtype=_CT2_DTYPES[t]) for t in order if t in types]
    if long_audio and spec.family == "whisper":
        # the batched-windows twin of each plain speed candidate; compile, eager attention and bf16
        # are left out (compile and eager never beat fp32 here, bf16 duplicates fp16 on CUDA and is
        # the slowest torch dtype on a CPU without AMX): one run stays a few minutes shorter
        out += [dataclasses.replace(m, longform="batched") for m in list(out)
                if m.engine in LONGFORM_ENGINES and not m.compile and m.attn == "sdpa" and m.dtype != "bf16"]
    if "whispercpp" in want and supports("whispercpp", spec.family) and not cuda \
            and importlib.util.find_spec("_pywhispercpp") is not None:
        # whisper.cpp's weight types: f16 (what its own converter writes) and the int8 / 5-bit
        # blocks; f32 is left out (on a CPU it is never the fastest, and f16 gives the same text)
        out += [ModelConfig(name=name, engine="whispercpp", weights=weights, dtype=d) for d in WHISPERCPP_DTYPES]
    if "ort" in want and supports("ort", spec.family) and importlib.util.find_spec("onnxruntime") is not None:
        out += [ModelConfig(name=name, engine="ort", weights=weights, dtype=d) for d in ("fp32", "int8")]
    return out


def optimize(
    name: str,
    base: RunConfig,
    device: str = "cpu",
    clip_length_s: float = 60.0,
    batch_size: int = 1,
    wer_budget: float = DEFAULT_WER_BUDGET,
    engines: tuple[str, ...] = (),
    compile: bool = True,
    on_cell: Callable | None = None,
    on_prepare: Callable | None = None,
) -> OptimizeResult:
    """Run every candidate as one run derived from `base` (its source, clips, timing, store, threads)."""
    from asrperf.report.gate import gate
    from asrperf.results.store import Store
    from asrperf.run.plan import expand
    from asrperf.run.runner import run

    weights = base.models[0].weights if base.models else "auto"
    models = candidates(name, device, weights, engines, compile, long_audio=clip_length_s > 30)
    cfg = dataclasses.replace(
        base, models=tuple(models), clip_lengths_s=(clip_length_s,), batch_sizes=(batch_size,),
        devices=(device,), threads=base.threads[:1], scenarios=("latency",), accuracy=True, energy=False,
        flops=False,
    ).validate()
    summary = run(cfg, on_cell=on_cell, on_prepare=on_prepare)
    model_of = {c.key: c.model for c in expand(cfg)}
    with Store(cfg.store) as store:
        rows = store.rows(summary.run_id)
    by_key = {r["cell_key"]: r for r in rows}
    ref_row = next((by_key[c.key] for c in expand(cfg) if c.model == models[0]), None)
    ref_ok = ref_row is not None and ref_row.get("status") == "ok"
    scored = ref_ok and ref_row.get("wer") is not None
    trials = []
    for key, model in model_of.items():
        row = by_key.get(key, {"status": "failed", "error": "not measured"})
        if row.get("status") != "ok":
            trials.append(Trial(model, row, None, None, None, None, "failed"))
            continue
        speedup = ref_row["latency_s_p50"] / row["latency_s_p50"] if ref_ok else None
        if model == models[0]:
            trials.append(Trial(model, row, speedup, 0.0 if scored else None, None, 0 if scored else None, "reference"))
            continue
        g = gate(row, rows) if scored else None
        if g is None or g.delta is None:
            trials.append(Trial(model, row, speedup, None, None, None, "accuracy not checked"))
            continue
        ci = (g.ci_low, g.ci_high) if g.ci_low is not None else None
        verdict = "within budget" if g.delta <= wer_budget else "over budget"
        trials.append(Trial(model, row, speedup, g.delta, ci, g.n_worse, verdict))
    eligible = [t for t in trials if t.verdict in ("reference", "within budget")]
    note = ""
    if not scored:
        reason = "weights are random" if weights == "random" or (ref_row or {}).get("weights") == "random" \
            else "the fp32 reference has no WER" if ref_ok else "the fp32 reference failed"
        note = (f"accuracy could not be gated ({reason}): the fastest variant is chosen on speed alone, "
                "and its accuracy change is unknown")
        eligible = [t for t in trials if t.verdict != "failed"]
    winner = min(eligible, key=lambda t: t.row["latency_s_p50"], default=None)
    return OptimizeResult(summary.run_id, Path(cfg.store), trials, winner, wer_budget, note)


def write_winner(result: OptimizeResult, base: RunConfig, path: str | Path) -> Path:
    """The winning configuration as a run config that `asrperf run` accepts, with why in a header."""
    if result.winner is None:
        raise ConfigError("optimize: no variant completed, so there is no configuration to write")
    w = result.winner
    cfg = dataclasses.replace(base, models=(dataclasses.replace(w.model, label=""),)).validate()
    header = [f"# written by `asrperf optimize {w.model.name}` (run {result.run_id} in {result.store})",
              f"# fastest variant within +{100 * result.wer_budget:.2g} WER points of the fp32 reference: "
              f"p50 {1000 * w.row['latency_s_p50']:,.0f} ms at {w.row['clip_length_s']:g} s, batch {w.row['batch_size']},"
              f" {w.row['device']}, {w.row['threads']} thread(s)"
              + (f", {w.speedup:.2f}x the reference" if w.speedup else "")]
    if result.note:
        header.append(f"# note: {result.note}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + dump_config(cfg))
    return path


TRIAL_COLUMNS = ("variant", "p50 ms", "speed-up", "WER %", "ΔWER pts [95% CI]", "worse utts", "peak RSS MiB",
                 "load s", "first call s", "verdict")


def trial_label(m: ModelConfig) -> str:
    return f"{m.engine} {m.variant}"


def trials_table(result: OptimizeResult) -> list[tuple[str, ...]]:
    """One display row per trial, in TRIAL_COLUMNS order; the winner is marked."""
    def f(v: Any, fmt: str, scale: float = 1.0) -> str:
        return "—" if v is None else format(v * scale, fmt)

    out = []
    for t in result.trials:
        r = t.row
        ok = t.verdict != "failed"
        delta = "—" if t.wer_delta is None else f"{100 * t.wer_delta:+.2f}" + (
            f" [{100 * t.wer_ci[0]:+.2f}, {100 * t.wer_ci[1]:+.2f}]" if t.wer_ci else "")
        verdict = t.verdict if ok else f"failed: {str(r.get('error'))[:80]}"
        if t is result.winner:
            verdict = f"CHOSEN ({verdict})"
        peak = r.get("peak_rss_bytes")
        out.append((
            trial_label(t.model), f(r.get("latency_s_p50") if ok else None, ",.0f", 1000),
            f(t.speedup, ".2f") + ("x" if t.speedup else ""), f(r.get("wer"), ".2f", 100), delta,
            "—" if t.n_worse is None else str(t.n_worse), f(peak, ",.0f", 2**-20),
            f(r.get("load_s"), ".2f"), f(r.get("first_call_s"), ".2f"), verdict,
        ))
    return out
