#!/usr/bin/env bash
# Set up the environment (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# the optional extras whose code the suite tests (experiment tracking, TensorBoard, Triton kernels in Triton's CPU
# interpreter, the Ray and submitit study executors); without them those tests skip
export CALIBMONAI_EXTRAS="${CALIBMONAI_EXTRAS:-mlflow,tensorboard,gpu,ray,slurm}"
source scripts/setup_env.sh
exec "$CALIBMONAI_PY" -m pytest -q -p no:cacheprovider tests "$@"
