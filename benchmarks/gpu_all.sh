#!/usr/bin/env bash
# Every GPU figure of issue 12 in one run (budget: 8 minutes on one H100/H200; the steps' timeouts add up to 480 s):
#   0. the CUDA tests of the Triton kernels, the device metrics and the bundle's GPU-cached data (about 45 s)
#   1. metrics: ECE + CECE + Brier on a 4 x 208^3 volume vs MONAI's CalibrationErrorMetric and one torch.sum,
#      CUDA peak memory, host syncs per call, GPU vs CPU results, the torch-only fallback
#   2. losses: fwd+bwd of every loss / F.cross_entropy at 2x4x96^3 and 2x4x160^3, Triton and torch paths, peak memory
#   3. training: images/s of the bundle's train config vs a hand-written AMP loop on data on the GPU
#   4. inference: seconds per scan of the bundle's inference workflow
# Usage (repository root, in an environment whose torch has CUDA; see README, GPU users):
#   CALIBMONAI_PY=/path/to/python bash benchmarks/gpu_all.sh 2>&1 | tee gpu_figures.txt
# Without CALIBMONAI_PY: .venv/bin/python when it exists, else python3. Exit status: the number of failed steps.
# A GPU machine that has CUDA torch but no package index: benchmarks/gpu_wheels.sh (run where pip works) says how.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${CALIBMONAI_PY:-}" ]; then
  PY="$CALIBMONAI_PY"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # calibmonai from this checkout, installed or not
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu_all] $PY has no usable CUDA torch (torch.cuda.is_available() is False); see README, GPU users." >&2
  exit 100
fi
"$PY" - <<'EOF'
import torch
from calibmonai._triton import HAVE_TRITON
print(f"[gpu_all] torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name(0)}, triton installed: {HAVE_TRITON}")
EOF
start=$SECONDS
failed=0
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT

step() {  # step <name> <timeout seconds> <command...>
  local name="$1" limit="$2"
  shift 2
  echo
  echo "=== $name (at $((SECONDS - start)) s, limit $limit s) ==="
  timeout "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "[gpu_all] $name FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    failed=$((failed + 1))
  fi
}

step "CUDA tests" 120 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_losses_triton.py tests/test_metrics_torch_backend.py tests/test_bundle_device_pipeline.py
step "metrics (4 x 208^3)" 75 "$PY" benchmarks/metrics.py --device cuda --size 208 --repeats 5
step "losses (2x4x96^3, 2x4x160^3)" 100 "$PY" benchmarks/losses.py --device cuda --repeats 5
# one small copy of the embedded task for both bundle benchmarks (not timed by them)
step "prepare data" 55 "$PY" -c "from calibmonai.data import prepare_mni_tissue; prepare_mni_tissue('$data/mni', num_subjects=6, split=(4, 1, 1), progress=False)"
step "training (bundle vs hand loop)" 70 "$PY" benchmarks/training.py --device cuda --dataset_dir "$data/mni" --iterations 60 --warmup 10
step "inference (seconds per scan)" 60 "$PY" benchmarks/inference.py --device cuda --input_dir "$data/mni/images" --repeats 1
echo
echo "[gpu_all] done in $((SECONDS - start)) s, $failed step(s) failed"
exit $failed
