#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels of calibmonai's dependencies that a GPU machine with CUDA torch,
# numpy, scipy, scikit-learn, matplotlib, numba, pandas and PyYAML may lack (monai, nibabel, pytorch-ignite, fire,
# termcolor, nilearn), at the versions this checkout's environment is tested with, for another Python version.
# For a GPU machine that cannot reach a package index: carry .whl/ there and install without network,
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
# then run benchmarks/gpu_all.sh (CALIBMONAI_PY=python3).
# Usage: bash benchmarks/gpu_wheels.sh [python version of the GPU machine, default 3.12]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_python="${1:-3.12}"
PY="${CALIBMONAI_PY:-.venv/bin/python}"
if ! "$PY" -c "import monai" >/dev/null 2>&1; then
  echo "[gpu_wheels] $PY has no monai: set up the environment first (source scripts/setup_env.sh)" >&2
  exit 1
fi
# name==version of each, as installed here (the versions the suite passed with)
mapfile -t pins < <("$PY" - <<'EOF'
from importlib.metadata import version
for name in ("monai", "nibabel", "pytorch-ignite", "fire", "termcolor", "nilearn"):
    print(f"{name}=={version(name)}")
EOF
)
rm -rf .whl
mkdir -p .whl
echo "[gpu_wheels] downloading for Python $target_python: ${pins[*]}"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$target_python" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls -l .whl
echo "[gpu_wheels] $(du -sh .whl | cut -f1) in .whl/ (the device tool carries at most 64 MiB with the working tree)"
