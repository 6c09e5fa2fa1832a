#!/usr/bin/env bash
# Set up the environment (if needed) and run the main job: the embedded MNI152 task, CE vs MbLS vs MEEP.
# Extra arguments go to `calibmonai demo` (e.g. --epochs 10).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
exec "$CALIBMONAI_PY" -m calibmonai.cli demo "$@"
