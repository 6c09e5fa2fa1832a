#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install calibmonai into it, idempotently.
# Usage: source scripts/setup_env.sh      -> exports CALIBMONAI_PY (the venv's python)
# The CPU torch build that lies on disk (torch==2.13.0) is installed *before* the package, so that pip
# never resolves an unpinned torch (several GB of CUDA wheels).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${CALIBMONAI_VENV:-$_root/.venv}"
if [ ! -x "$_venv/bin/python" ]; then
  echo "[setup] creating virtual environment $_venv"
  python3 -m venv "$_venv"
fi
_py="$_venv/bin/python"
if ! "$_py" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing the CPU torch build (torch==2.13.0)"
  "$_py" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
_stamp="$_venv/.calibmonai-install-stamp"
_want="$(cat "$_root/setup.cfg" "$_root/pyproject.toml" | sha256sum | cut -d' ' -f1) $_root"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ] || ! "$_py" -c "import calibmonai, monai, nilearn, pytest" >/dev/null 2>&1; then
  echo "[setup] installing calibmonai (editable) with its test and demo extras"
  "$_py" -m pip install -q --disable-pip-version-check -e "$_root[test,demo]"
  echo "$_want" > "$_stamp"
fi
export CALIBMONAI_PY="$_py"
