#!/usr/bin/env bash
# The 8B-shaped pair (Llama-3-8B → Llama-3.1-8B shapes, 32 layers × 7 roles, r = 320) on one GPU,
# in one call of under 10 minutes:
#   1. writes the synthetic checkpoints (tools/bench_transfer.py's inputs; not timed),
#   2. prints the floor: the time to read both checkpoints once (page cache dropped where allowed),
#   3. runs tools/bench_transfer.py: gram engine cold (fills the cache), warm (2nd adapter, traced
#      with jax.profiler), a 1-layer baseline extrapolated, then the exact engine,
#   4. leaves under $OUT: device.txt, floor.txt, table.md (rewritten after every row, so the time
#      limit keeps the finished rows), log.txt and trace.tgz.part-* (the warm row's jax.profiler
#      trace in 15 MB parts; open it with TensorBoard's profile plugin or https://ui.perfetto.dev).
# Run from the repository root:  OUT=/some/folder bash tools/gpu_8b.sh
# Smoke test on any machine:     OUT=/tmp/g PAIR=tiny LAYERS=1 DROP_CACHES=0 bash tools/gpu_8b.sh
# Needs jax with a GPU backend, orbax-checkpoint, safetensors, absl-py, numpy (no torch).
set -uo pipefail
OUT=${OUT:-tools/out/gpu}
PAIR=${PAIR:-8b}
LAYERS=${LAYERS:-32}
WORK=${WORK:-/tmp/crosslora_gpu_$PAIR}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

{
  date -u
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "cpu cores: $(nproc)"
  "$PY" -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
} 2>&1 | tee "$OUT/device.txt"

# Dropping the page cache needs root and a kernel that allows it; say which one this run had.
DROP=()
if [ "${DROP_CACHES:-1}" = 1 ] && sync && (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then
  DROP=(--drop_caches)
  echo "page cache: dropped before the floor read and each row" | tee -a "$OUT/device.txt"
else
  echo "page cache: cannot be dropped here; reads may come from memory" | tee -a "$OUT/device.txt"
fi

# No variants: the tool only writes the inputs.
if ! "$PY" tools/bench_transfer.py --pair="$PAIR" --layers="$LAYERS" --variants= --work="$WORK" \
  > /dev/null 2>> "$OUT/log.txt"; then
  echo "error: writing the inputs failed (see $OUT/log.txt)"
  exit 1
fi
if ((${#DROP[@]})); then sync; echo 3 > /proc/sys/vm/drop_caches; fi
"$PY" -c '
import sys, time
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("*/*.safetensors"))
started, total = time.perf_counter(), 0
for f in files:
    with f.open("rb") as handle:
        while block := handle.read(64 << 20):
            total += len(block)
print(f"floor: read both checkpoints once ({total / 1e9:.2f} GB, {len(files)} files) in "
      f"{time.perf_counter() - started:.1f} s")
' "$WORK/$PAIR-L$LAYERS" | tee "$OUT/floor.txt"

rm -rf "$WORK/trace"
timeout "${BENCH_TIMEOUT:-420}" "$PY" tools/bench_transfer.py --pair="$PAIR" --layers="$LAYERS" \
  --variants="${VARIANTS:-gram,warm,baseline,exact}" --baseline_backend=jax --baseline_layers=1 \
  "${DROP[@]}" --work="$WORK" --trace_warm="$WORK/trace" --out="$OUT/table.md" 2>&1 | tee -a "$OUT/log.txt"
# Files come back from $OUT only up to 16 MiB each (8 files in all): the trace goes in 15 MB parts;
# join them with `cat trace.tgz.part-* > trace.tgz`.
if [ -d "$WORK/trace" ]; then
  tar -czf "$WORK/trace.tgz" -C "$WORK" trace && split -b 15M -a 1 "$WORK/trace.tgz" "$OUT/trace.tgz.part-"
  ls -la "$OUT"
fi
cat "$OUT/table.md" 2>/dev/null
