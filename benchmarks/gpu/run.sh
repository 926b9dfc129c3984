#!/usr/bin/env bash
# The study's GPU table and asrperf's CUDA checks in one call on the lent H200 (issue 19).
#
#   there (after benchmarks/gpu/prepare.sh here):   bash benchmarks/gpu/run.sh
#   here, on the CPU, tiny lengths/models/timing:   bash benchmarks/gpu/run.sh --dry-run
#
# Stages, in this order, each under its own time limit; one that fails or times out is recorded
# and the next one runs. Time a stage leaves unused passes to the stages after it; a stage never
# eats the budgets of those after it, so a hang costs at most its own share of the 9 minutes.
#   setup           staged wheels into /tmp/site, tiny.en rebuilt into a hub cache, clips copied; versions
#   pytest          pytest -m "gpu or device" --asrperf-device cuda (the dry run only collects them)
#   table           asrperf run seed_gpu.toml: latency b1 and energy b16 on 60 s, WER, FLOPs and MFU
#   max_throughput  asrperf run max_throughput_gpu.toml (same store, so the report shows one table)
#   profile         asrperf run profile_gpu.toml: whisper-tiny and wav2vec2-base, 30 s, batch 1
#   optimize        asrperf optimize whisper-tiny.en --device cuda (its own store)
#   report          HTML and markdown report, the stores, the profile traces, into $OUT
# Then the summary table (benchmarks/gpu/summary.py), printed last: the device tool returns only
# the output's tail. Files under $OUT: run.log summary.txt gpu.sqlite optimize.sqlite report.html
# report.md optimized.toml traces.tar.gz (the tool brings back at most 8).
#
# Engines: transformers. CTranslate2 (engine ct2) is not carried: ctranslate2 4.8.5's cp312 wheel is
# 40.8 MiB and built for CUDA 12 (it loads libcublas.so.12; the machine has CUDA 13). ONNX Runtime
# (engine ort) joins optimize only when the machine's onnxruntime has the CUDA execution provider.
#
# Options: --dry-run; --stages a,b,...; --budget-s N (default 540, spread over the chosen stages in
# proportion to their budgets below); --out DIR (default $OUT, else
# asrperf-results/gpu); --work DIR (default /tmp/asrperf-gpu, dry run: OUT/work); --stage-dir DIR
# (default .gpu-stage; optional in the dry run); --cache-dir DIR (use this asrperf cache in place of
# a copy of the staged one). PYTHON names the interpreter (default python3).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
DRY=0 STAGES="setup,pytest,table,max_throughput,profile,optimize,report" BUDGET_S=540
OUT_DIR=${OUT:-} WORK= STAGE_DIR= CACHE_GIVEN=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --stages) STAGES=$2; shift ;;
    --budget-s) BUDGET_S=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --work) WORK=$2; shift ;;
    --stage-dir) STAGE_DIR=$2; shift ;;
    --cache-dir) CACHE_GIVEN=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT_DIR=${OUT_DIR:-$ROOT/asrperf-results/gpu}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ "$DRY" = 1 ]; then WORK=${WORK:-$OUT_DIR/work}; else WORK=${WORK:-/tmp/asrperf-gpu}; fi
if [ -z "$STAGE_DIR" ] && [ "$DRY" = 0 ]; then STAGE_DIR=$ROOT/.gpu-stage; fi
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
CACHE=${CACHE_GIVEN:-$WORK/cache}
PY=${PYTHON:-python3}
LOG=$OUT_DIR/run.log
: > "$LOG"
: > "$WORK/stages.tsv"

export PYTHONUNBUFFERED=1 PY ROOT DRY WORK CACHE CACHE_GIVEN STAGE_DIR OUT_DIR
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
[ "$DRY" = 0 ] && export PYTHONPATH=$ROOT/src:/tmp/site
# real tiny.en is rebuilt into this hub cache (setup); nothing may try the network (there is none there)
export HF_HUB_CACHE=$WORK/hub HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$DRY" = 1 ]; then
  # the dry run only collects the GPU tests (CI runs the device tests on the CPU anyway)
  export CONF=$WORK/configs DEVICE=cpu OPT_LENGTH=5 OPT_COMPILE=--no-compile PYTEST_MODE=--collect-only \
    PYTEST_PATHS=$ROOT/tests/test_gpu.py
else
  export CONF=$ROOT/benchmarks/gpu DEVICE=cuda OPT_LENGTH=60 OPT_COMPILE=--compile PYTEST_MODE= PYTEST_PATHS=$ROOT/tests
fi

# seconds per stage; with the summary's reserve they add up to the default 540 s budget
declare -A BUDGET=([setup]=25 [pytest]=70 [table]=170 [max_throughput]=95 [profile]=40 [optimize]=110 [report]=20)
SUMMARY_RESERVE_S=10
ORDER=(setup pytest table max_throughput profile optimize report)
IFS=, read -r -a WANTED <<< "$STAGES"
for s in "${WANTED[@]}"; do
  [ -n "${BUDGET[$s]:-}" ] || { echo "run.sh: unknown stage '$s'; stages: ${ORDER[*]}" >&2; exit 2; }
done
wanted() { local s; for s in "${WANTED[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
# --budget-s is spread over the selected stages in proportion to their budgets (540 s for all: 1x)
planned=$SUMMARY_RESERVE_S
for s in "${WANTED[@]}"; do planned=$((planned + BUDGET[$s])); done
for s in "${ORDER[@]}"; do BUDGET[$s]=$((BUDGET[$s] * BUDGET_S / planned)); done

log() { echo "$*" | tee -a "$LOG"; }

stage_setup() {
  local ok=0
  if [ "$DRY" = 0 ]; then
    [ -d "$STAGE_DIR/wheels" ] || { echo "setup: $STAGE_DIR/wheels is missing: run benchmarks/gpu/prepare.sh here and carry .gpu-stage"; return 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$STAGE_DIR"/wheels/*.whl || ok=1
  fi
  if [ -z "$CACHE_GIVEN" ]; then
    rm -rf "$CACHE"
    if [ -n "$STAGE_DIR" ] && [ -d "$STAGE_DIR/cache" ]; then cp -r "$STAGE_DIR/cache" "$CACHE"; else mkdir -p "$CACHE"; fi
  fi
  if [ -n "$STAGE_DIR" ] && [ -d "$STAGE_DIR/tiny_en" ]; then
    "$PY" "$ROOT/benchmarks/gpu/transport.py" unpack --src "$STAGE_DIR/tiny_en" --hub-cache "$HF_HUB_CACHE" || ok=1
  elif [ "$DRY" = 0 ]; then
    echo "setup: $STAGE_DIR/tiny_en is missing: whisper-tiny.en has no real weights here"; ok=1
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
  "$PY" - <<'PYEOF' || ok=1
import platform, torch, transformers, asrperf
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, asrperf {asrperf.__version__}; "
      f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu only'}")
for name in ("soundfile", "soxr", "jiwer", "pynvml", "onnxruntime", "ctranslate2"):
    try:
        mod = __import__(name)
        extra = f" providers {mod.get_available_providers()}" if name == "onnxruntime" else ""
        print(f"  {name} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as exc:
        print(f"  {name}: not importable ({type(exc).__name__}: {exc})")
PYEOF
  "$PY" -m asrperf doctor || ok=1
  return $ok
}

stage_pytest() {
  "$PY" -m pytest -q -rs -p no:cacheprovider -o addopts="" -m "gpu or device" --asrperf-device "$DEVICE" \
    --asrperf-cache "$CACHE" $PYTEST_MODE $PYTEST_PATHS
}

# a rerun on a warm machine resumes the store: committed ok cells are kept, failed ones run again
asrperf_run() { "$PY" -m asrperf run "$CONF/$1" --store "$WORK/gpu.sqlite" --cache-dir "$CACHE" --retry-failed; }
stage_table() { asrperf_run seed_gpu.toml; }
stage_max_throughput() { asrperf_run max_throughput_gpu.toml; }
stage_profile() { asrperf_run profile_gpu.toml; }

stage_optimize() {
  local engines=(-e transformers)
  if [ "$DEVICE" != cpu ] && "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
    engines+=(-e ort)
  fi
  rm -f "$WORK"/optimize.sqlite*  # its variants are compared within one run: a rerun measures them all again
  "$PY" -m asrperf optimize whisper-tiny.en --config "$CONF/optimize_gpu.toml" --device "$DEVICE" --length "$OPT_LENGTH" \
    --weights real "${engines[@]}" $OPT_COMPILE --store "$WORK/optimize.sqlite" --cache-dir "$CACHE" -o "$OUT_DIR/optimized.toml"
}

stage_report() {
  local ok=0
  "$PY" -m asrperf report --store "$WORK/gpu.sqlite" --run all --html "$OUT_DIR/report.html" || ok=1
  "$PY" -m asrperf report --store "$WORK/gpu.sqlite" --run all -f markdown -o "$OUT_DIR/report.md" || ok=1
  "$PY" - "$WORK" "$OUT_DIR" <<'PYEOF' || ok=1
import sqlite3, sys
from pathlib import Path
work, out = map(Path, sys.argv[1:])
for name in ("gpu.sqlite", "optimize.sqlite"):  # one self-contained file each (the stores run in WAL mode)
    if (work / name).is_file():
        src, dst = sqlite3.connect(work / name), sqlite3.connect(out / name)
        src.backup(dst)
        dst.close(), src.close()
PYEOF
  if [ -d "$WORK/traces" ]; then
    tar -czf "$WORK/traces.tar.gz" -C "$WORK" traces || ok=1
    if [ "$(stat -c %s "$WORK/traces.tar.gz")" -le $((15 * 1024 * 1024)) ]; then
      mv "$WORK/traces.tar.gz" "$OUT_DIR/traces.tar.gz"
    else
      echo "report: traces.tar.gz is over 15 MiB; left in $WORK (the tool brings back files of 16 MiB at most)"
    fi
  fi
  return $ok
}
export -f stage_setup stage_pytest asrperf_run stage_table stage_max_throughput stage_profile stage_optimize stage_report

START=$SECONDS
if [ "$DRY" = 1 ]; then  # the stages' configs, before any stage: a slow setup must not leave the others without them
  "$PY" "$ROOT/benchmarks/gpu/dryrun.py" "$CONF" "$ROOT"/benchmarks/gpu/*.toml 2>&1 | tee -a "$LOG" || exit 1
fi
log "run.sh: $( [ "$DRY" = 1 ] && echo "DRY RUN on the CPU" || echo "GPU run" ) at $(date -u +%FT%TZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'); budget ${BUDGET_S} s; out $OUT_DIR; work $WORK"
for i in "${!ORDER[@]}"; do
  s=${ORDER[$i]}
  wanted "$s" || continue
  later=0
  for t in "${ORDER[@]:$((i + 1))}"; do wanted "$t" && later=$((later + ${BUDGET[$t]})); done
  limit=$((BUDGET_S - (SECONDS - START) - later - SUMMARY_RESERVE_S))
  [ "$limit" -gt $((2 * BUDGET[$s])) ] && limit=$((2 * BUDGET[$s]))  # slack helps, but a hang stays bounded
  if [ "$limit" -lt 5 ]; then
    log "=== $s: skipped, no time left"
    printf '%s\t%s\t%s\t%s\n' "$s" skipped 0 0 >> "$WORK/stages.tsv"
    continue
  fi
  log "=== $s (limit ${limit} s, $((SECONDS - START)) s into the run)"
  t0=$SECONDS
  if [ "$s" = pytest ]; then
    : > "$WORK/pytest.log"
    timeout -k 10 "$limit" bash -c stage_pytest 2>&1 | tee -a "$LOG" "$WORK/pytest.log"
  else
    timeout -k 10 "$limit" bash -c "stage_$s" 2>&1 | tee -a "$LOG"
  fi
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && log "=== $s: TIMED OUT after ${limit} s"
  printf '%s\t%s\t%s\t%s\n' "$s" "$rc" $((SECONDS - t0)) "$limit" >> "$WORK/stages.tsv"
done
"$PY" "$ROOT/benchmarks/gpu/summary.py" --store "$WORK/gpu.sqlite" --optimize-store "$WORK/optimize.sqlite" \
  --stages "$WORK/stages.tsv" --pytest-log "$WORK/pytest.log" --total-s $((SECONDS - START)) > "$OUT_DIR/summary.txt" 2>&1
rc=$?
cat "$OUT_DIR/summary.txt" >> "$LOG"
cat "$OUT_DIR/summary.txt"
exit $rc
