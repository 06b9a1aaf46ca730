#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU:
#   1. make sure jax sees the GPU (installs jax[cuda12] from pip if it does not; offline,
#      point WHEELS=DIR at a folder of wheels);
#   2. run the tests that touch devices (conv implementations, the benchmark smoke run,
#      the train step and multi-device tests);
#   3. benchmark ResNet-50: training in bfloat16 on synthetic data at batch 256 (target:
#      >= 3,000 img/s on one H200) and inference (bf16 and fp32), writing JSON.
#
# usage: scripts/gpu_check.sh [OUTDIR]      (default: $OUT if set, else ./gpu_check_out)
# A few minutes on one H200; the benchmark itself is ~1-2 min (compile included).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
log() { echo "[gpu_check] $*" | tee -a "$OUTDIR/gpu_check.log"; }

nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed (no NVIDIA driver?)"
has_gpu() { "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }
if ! has_gpu; then
  ver=$("$PY" -c "import jax; print(jax.__version__)")
  log "jax $ver does not see a GPU: installing jax[cuda12]==$ver"
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "jax[cuda12]==$ver" || true
  else
    "$PY" -m pip install --quiet "jax[cuda12]==$ver" || "$PY" -m pip install --quiet "jax[cuda13]==$ver" || true
  fi
  has_gpu || { log "still no GPU backend: giving up"; exit 2; }
fi
"$PY" -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUTDIR/gpu_check.log"

status=0
log "tests that touch devices"
timeout 900 "$PY" -m pytest -q -x tests/test_nn.py tests/test_benchmark.py \
    tests/test_train.py -k "conv or im2col or bench or smoke or policy or bfloat16 or device or step" \
    2>&1 | tail -n 30 | tee "$OUTDIR/tests.txt" || status=1
[ "${PIPESTATUS[0]}" = 0 ] || status=1

log "resnet50 benchmark: train bf16 b256, inference bf16/fp32 b256"
XLA_PYTHON_CLIENT_PREALLOCATE=true timeout 900 "$PY" scripts/benchmark.py \
    --targets resnet50:train:224:256 resnet50:infer:224:256 --dtypes bfloat16 \
    --reps 5 --min-rep-s 0.5 --json "$OUTDIR/resnet50_bf16.json" 2>&1 | tee "$OUTDIR/benchmark_bf16.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
timeout 600 "$PY" scripts/benchmark.py --targets resnet50:infer:224:256 resnet50:train:224:256 \
    --dtypes float32 --reps 5 --min-rep-s 0.5 --json "$OUTDIR/resnet50_fp32.json" \
    2>&1 | tee "$OUTDIR/benchmark_fp32.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
"$PY" - "$OUTDIR/resnet50_bf16.json" <<'PYEOF' | tee -a "$OUTDIR/gpu_check.log"
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["targets"]:
    s = t["runners"]["jax"]
    print(f"{t['target']}: {s['img_s_median']:.0f} img/s, {s.get('fraction_of_peak', 0):.2f} of matmul peak")
    if t["mode"] == "train":
        print("target >= 3000 img/s:", "MET" if s["img_s_median"] >= 3000 else "NOT met")
PYEOF
log "done (status $status); results in $OUTDIR"
exit $status
