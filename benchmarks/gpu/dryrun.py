"""The dry run's configs: each GPU config of benchmarks/gpu/ shrunk to run on this CPU in seconds.

`run.sh --dry-run` runs every stage of the GPU run on these, so the scripts, the configs' keys and
the whole path (stores, report, summary) are tested where no GPU is lent. What changes: the device
(cpu), the clip length (5 s, one clip, from the tests' 30-sentence corpus), the models (the smallest
Whisper and CTC model of a latency config, fp32; the CTC one alone for max-throughput and profile), batch sizes (1 and 2), the max-throughput bound (2) and the
timing (one timed call). Everything else (scenarios, flops, energy) is the GPU config's.

    python benchmarks/gpu/dryrun.py OUT_DIR benchmarks/gpu/*.toml
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from asrperf.config import RunConfig, TimingConfig, dump_config, load_config

# the smallest of each kind, in order of preference: one Whisper (real weights where the config has
# them) and one CTC model per config
DRY_MODELS = {"whisper": ("whisper-tiny.en", "whisper-tiny"), "ctc": ("wav2vec2-base",)}
DRY_SOURCE = {"kind": "builtin", "n_sentences": 30}  # tests/conftest.py's tiny_source: its corpus cache is shared
DRY_TIMING = TimingConfig(warmup_calls=0, min_calls=1, min_time_s=0.0, max_calls=1, max_time_s=0.0)


def dry_config(cfg: RunConfig) -> RunConfig:
    """`cfg` on the CPU with tiny lengths, models and timing (see the module docstring)."""
    models = []
    # the search and the profiler exercise the same paths with any model: the cheapest (CTC) one
    kinds = DRY_MODELS if "latency" in cfg.scenarios else {"ctc": DRY_MODELS["ctc"]}
    for names in kinds.values():
        m = next((m for name in names for m in cfg.models if m.name == name), None)
        if m is not None:
            models.append(dataclasses.replace(m, dtype="fp32", label=""))
    if not models:
        raise SystemExit(f"dry run: none of {', '.join(n for ns in DRY_MODELS.values() for n in ns)} is in this config")
    return dataclasses.replace(
        cfg, models=tuple(models), devices=("cpu",), threads=(0,), clip_lengths_s=(5.0,), n_clips=1,
        batch_sizes=(1, 2) if max(cfg.batch_sizes) > 1 else (1,), max_batch=2, source=dict(DRY_SOURCE),
        timing=DRY_TIMING, cell_timeout_s=300.0,  # a shared 2-core CI machine can be 10x slower than idle
    ).validate()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, argv[1:]):
        (out / path.name).write_text(f"# dry run of {path} (benchmarks/gpu/dryrun.py)\n" + dump_config(dry_config(load_config(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
