"""Roofline per stage: FLOPs and bytes moved against the device's measured peaks.

A stage is a root module forward (see `measure.stages`): Whisper's encoder (one per window
batch), its decoder step (decoder + LM head; the first step of each window, which runs the prompt
and builds the cross-attention cache, is kept apart from the later one-token steps), a CTC model's
one forward per call. Per invocation of a stage:

  FLOPs        counted on the real forward by `count_flops` (attention formulas included), per
               top-level module call.
  bytes        a LOWER BOUND, analytic: what the stage cannot avoid moving to or from memory
                 weights   every parameter of every module whose forward ran, once per invocation
                           (a tied table once); an nn.Embedding lookup only the rows its index
                           tensor's last dimension can reach, unless the same table is also used
                           whole (Whisper's tied LM head reads all of it)
                 state     every tensor in the KV cache the forward returns (self-attention keys
                           and values of all positions so far, cross-attention keys and values of
                           the encoder frames): attention reads or writes each at least once
                 inputs    tensors passed directly as arguments (features, token ids, masks)
                 outputs   tensors returned directly (hidden states, logits), not ones passed in
               Left out: intermediate activations (a perfectly fused stage keeps them on chip),
               buffers, parameters read through `module.weight` without calling the module
               (Whisper's encoder positions), re-reads. Hence a lower bound.
  time         the measured mean wall time of the stage's forwards (device synchronised at each
               root's start and end; no profiler running).

Then: achieved FLOP/s and bytes/s; arithmetic intensity = FLOPs / bytes; the ridge point =
peak FLOP/s / peak bytes/s; compute time = FLOPs / peak FLOP/s; memory time = bytes / peak
bytes/s; lower-bound time = max of the two. The bound that applies:
  launch/overhead  measured time > OVERHEAD_FACTOR x the lower bound: neither roof explains it
                   (kernel launches, Python and framework dispatch, synchronisation, small ops)
  compute          otherwise, when compute time >= memory time (intensity >= ridge point)
  memory           otherwise
Peaks are measured on the same device, dtype and threads (`measure.peak`), never a datasheet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from asrperf.measure.stages import Invocation, RootCalls, runs

OVERHEAD_FACTOR = 3.0
BYTES_METHOD = ("lower bound, analytic: parameters of the modules that ran (once; embedding rows looked up) "
                "+ KV cache returned + direct input and output tensors; intermediate activations not counted")
TIME_METHOD = "mean wall time per forward, device synchronised at each root forward's start and end, no profiler"


def roofline_point(flops: float | None, bytes_moved: float, time_s: float, peak_flops_per_s: float,
                   peak_bytes_per_s: float) -> dict[str, Any]:
    """Roofline figures of one stage invocation; `flops` None when the counter could not run.

    compute_s = flops / peak_flops_per_s, memory_s = bytes_moved / peak_bytes_per_s,
    lower_bound_s = max(compute_s, memory_s); the bound as in the module docstring.
    """
    if time_s <= 0 or bytes_moved <= 0 or peak_flops_per_s <= 0 or peak_bytes_per_s <= 0:
        raise ValueError(f"roofline_point: time_s={time_s}, bytes_moved={bytes_moved}, peaks "
                         f"{peak_flops_per_s}/{peak_bytes_per_s} must all be > 0")
    memory_s = bytes_moved / peak_bytes_per_s
    compute_s = flops / peak_flops_per_s if flops is not None else None
    lower_bound_s = max(compute_s or 0.0, memory_s)
    if time_s > OVERHEAD_FACTOR * lower_bound_s:
        bound = "launch/overhead"
    elif compute_s is None:
        bound = "unknown (FLOPs not counted)"
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return {
        "flops": flops, "bytes": bytes_moved, "time_s": time_s,
        "intensity_flops_per_byte": flops / bytes_moved if flops is not None else None,
        "ridge_flops_per_byte": peak_flops_per_s / peak_bytes_per_s,
        "achieved_flops_per_s": flops / time_s if flops is not None else None,
        "achieved_bytes_per_s": bytes_moved / time_s,
        "flops_share_of_peak": flops / time_s / peak_flops_per_s if flops is not None else None,
        "bytes_share_of_peak": bytes_moved / time_s / peak_bytes_per_s,
        "compute_s": compute_s, "memory_s": memory_s, "lower_bound_s": lower_bound_s,
        "time_over_lower_bound": time_s / lower_bound_s,
        "bound": bound,
    }


# -- bytes, lower bound ------------------------------------------------------------------------
def _walk_tensors(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[Any]:
    """Every tensor reachable from `obj` through tuples, lists, dicts and plain objects' attributes
    (a transformers Cache holds its key / value tensors in layer objects); modules are not entered."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6 or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.nn.Module)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_tensors(v, depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk_tensors(v, depth + 1, seen)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _walk_tensors(v, depth + 1, seen)


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def weight_bytes(ran: list[tuple[Any, tuple]]) -> int:
    """Parameter bytes of the modules that ran, each storage once; embedding lookups by rows."""
    import torch

    read: dict[tuple[int, int], int] = {}
    for module, args in ran:
        for p in module.parameters(recurse=False):
            n = _nbytes(p)
            if isinstance(module, torch.nn.Embedding) and p is module.weight:
                idx = args[0] if args and isinstance(args[0], torch.Tensor) else None
                # at least as many distinct rows as the index's last dimension can hold (one sequence)
                rows = min(p.shape[0], idx.shape[-1]) if idx is not None and idx.dim() > 0 else 0
                n = rows * p[0].numel() * p.element_size()
            key = (p.data_ptr(), p.numel())
            read[key] = max(read.get(key, 0), n)
    return sum(read.values())


def io_bytes(args: tuple, kwargs: dict, output: Any) -> dict[str, int]:
    """{inputs, state, outputs} bytes of one root forward (see the module docstring)."""
    import torch

    in_ptrs = {t.data_ptr() for t in _walk_tensors((args, kwargs))}
    direct = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    inputs = sum(_nbytes(t) for t in {t.data_ptr(): t for t in direct}.values())
    outputs, state = 0, {}
    top = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else [output]
    for v in top:
        if isinstance(v, torch.Tensor):
            outputs += _nbytes(v) if v.data_ptr() not in in_ptrs else 0
        else:  # a KV cache (or other carried state): counted whole, it is read or written this step
            state.update({t.data_ptr(): _nbytes(t) for t in _walk_tensors(v)})
    return {"inputs": inputs, "state": sum(state.values()), "outputs": outputs}


# -- measuring ---------------------------------------------------------------------------------
def _stage_labels(invocations: list[Invocation], roles: dict[str, str], repeated: set[type]) -> list[tuple[str, str]]:
    """(stage, unit) of each invocation of one call. A module called several times in a row within
    a call (decoder steps) splits into its first call of each run (the prompt step, which also
    fills the cross-attention cache) and the later ones (one token per sequence each)."""
    out: list[tuple[str, str]] = []
    for r in runs(invocations):
        name = roles.get(r[0].name) or r[0].name
        if type(r[0].module) in repeated:
            out += [(f"{name} step 1", "first of each run of steps (the prompt)")]
            out += [(f"{name} steps 2+", "per step (one token per sequence)")] * (len(r) - 1)
        else:
            out += [(name, "per forward")] * len(r)
    return out


def count_pass(call: Callable[[], Any], synchronize: Callable[[], None]) -> list[Invocation]:
    """One call under `count_flops` with module tracking: FLOPs and bytes per root forward."""
    from asrperf.measure.flops import count_flops

    def end(inv: Invocation, args: tuple, kwargs: dict, output: Any, ran: list) -> None:
        inv.facts["weight_bytes"] = weight_bytes(ran)
        inv.facts.update({f"{k}_bytes": v for k, v in io_bytes(args, kwargs, output).items()})

    with RootCalls(synchronize, on_end=end, track_modules=True) as rec:
        fc = count_flops(call)
    if [c.module for c in fc.calls] != [i.name for i in rec.invocations]:
        raise RuntimeError(f"roofline: the FLOP counter saw {len(fc.calls)} top-level calls, the stage "
                           f"recorder {len(rec.invocations)}; they must be the same calls")
    for inv, c in zip(rec.invocations, fc.calls):
        inv.facts["flops"] = c.flops
    return rec.invocations


def time_pass(call: Callable[[], Any], synchronize: Callable[[], None],
              n_calls: int) -> tuple[list[list[Invocation]], list[float]]:
    """`n_calls` calls with root forwards timed (no counter, no module tracking): the invocations
    of each call, and each call's wall time (device synchronised) to set the stages against."""
    invocations, calls_s = [], []
    for _ in range(n_calls):
        with RootCalls(synchronize) as rec:
            synchronize()
            t0 = time.perf_counter()
            call()
            synchronize()
            calls_s.append(time.perf_counter() - t0)
        invocations.append(rec.invocations)
    return invocations, calls_s


def stage_roofline(counted: list[Invocation], timed: list[list[Invocation]], peak_flops_per_s: float,
                   peak_bytes_per_s: float, roles: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One roofline dict per stage, in call order: figures per invocation, averaged.

    `counted` is one call's invocations (FLOPs and bytes), `timed` one list per timed call.
    `roles` names top-level module classes ("WhisperEncoder" -> "encoder", Engine.flop_stages()).
    """
    roles = roles or {}
    calls = [("counted", counted)] + [("timed", t) for t in timed]
    repeated = {type(r[0].module) for _, invs in calls for r in runs(invs) if len(r) > 1}
    groups: dict[str, dict[str, Any]] = {}
    for which, invs in calls:
        for (label, unit), inv in zip(_stage_labels(invs, roles, repeated), invs):
            g = groups.setdefault(label, {"unit": unit, "counted": [], "timed": []})
            g[which].append(inv)
    n_calls = len(timed)
    out = []
    for label, g in groups.items():
        c, t = g["counted"], g["timed"]
        if not c or not t:
            continue  # a stage only one pass reached (a different token count): no pair to compare
        mean = lambda key: sum(i.facts[key] for i in c) / len(c)  # noqa: E731
        parts = {k: mean(f"{k}_bytes") for k in ("weight", "state", "inputs", "outputs")}
        time_s = sum(i.duration_s for i in t) / len(t)
        point = roofline_point(mean("flops"), sum(parts.values()), time_s, peak_flops_per_s, peak_bytes_per_s)
        out.append({"stage": label, "unit": g["unit"], "module": c[0].name,
                    "invocations_per_call": len(t) / n_calls, **point,
                    **{f"bytes_{k}": v for k, v in parts.items()}, "time_min_s": min(i.duration_s for i in t),
                    "peak_flops_per_s": peak_flops_per_s, "peak_bytes_per_s": peak_bytes_per_s})
    return out


def measure_roofline(call: Callable[[], Any], synchronize: Callable[[], None], n_calls: int,
                     peak_flops_per_s: float, peak_bytes_per_s: float,
                     roles: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], list[float]]:
    """Time `n_calls` calls (the caller has warmed up), count one; the stage rooflines and the
    timed calls' wall times (seconds)."""
    timed, calls_s = time_pass(call, synchronize, n_calls)
    counted = count_pass(call, synchronize)
    return stage_roofline(counted, timed, peak_flops_per_s, peak_bytes_per_s, roles), calls_s
