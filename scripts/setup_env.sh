#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and install calibmonai into it, idempotently.
# Usage: source scripts/setup_env.sh      -> exports CALIBMONAI_PY (the environment's python)
#
# Which environment (first match):
#   CALIBMONAI_PYTHON=/path/to/python   an existing interpreter (conda env, system python, another venv): used as
#                                       it is, no venv is created; calibmonai is installed into it.
#   CALIBMONAI_VENV=/path               a venv, reused when it exists, created otherwise (default: .venv); with
#                                       CALIBMONAI_SYSTEM_SITE_PACKAGES=1 it is created with --system-site-packages
#                                       from CALIBMONAI_BASE_PYTHON (default python3), so it sees that python's torch.
# torch: whatever torch the environment already imports is kept, CUDA builds included: it is never replaced, and
# calibmonai is installed with that exact torch version as a pip constraint, so no dependency can pull another.
# Only an environment without torch gets the CPU build lying on disk (torch==2.13.0), *before* the package, so
# that pip never resolves an unpinned torch (several GB of CUDA wheels).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${CALIBMONAI_PYTHON:-}" ]; then
  if ! "$CALIBMONAI_PYTHON" -c "import sys" >/dev/null 2>&1; then
    echo "[setup] CALIBMONAI_PYTHON=$CALIBMONAI_PYTHON is not a working python interpreter" >&2
    return 1 2>/dev/null || exit 1
  fi
  _py="$CALIBMONAI_PYTHON"
  _stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/calibmonai"
  mkdir -p "$_stamp_dir"
  _stamp="$_stamp_dir/install-stamp-$(printf '%s' "$_py" | sha256sum | cut -c1-16)"
else
  _venv="${CALIBMONAI_VENV:-$_root/.venv}"
  if [ ! -x "$_venv/bin/python" ]; then
    if [ "${CALIBMONAI_SYSTEM_SITE_PACKAGES:-0}" = "1" ]; then
      echo "[setup] creating virtual environment $_venv (--system-site-packages: it sees ${CALIBMONAI_BASE_PYTHON:-python3}'s torch)"
      "${CALIBMONAI_BASE_PYTHON:-python3}" -m venv --system-site-packages "$_venv"
    else
      echo "[setup] creating virtual environment $_venv"
      "${CALIBMONAI_BASE_PYTHON:-python3}" -m venv "$_venv"
    fi
  fi
  _py="$_venv/bin/python"
  _stamp="$_venv/.calibmonai-install-stamp"
fi
# "<version> <cuda version or cpu>" of the torch the environment imports, empty without one
_torch="$("$_py" -c "import torch; print(torch.__version__, torch.version.cuda or 'cpu')" 2>/dev/null || true)"
if [ -z "$_torch" ]; then
  echo "[setup] installing the CPU torch build (torch==2.13.0) into $_py (for a GPU, install a CUDA torch first: see README, GPU users)"
  "$_py" -m pip install -q --disable-pip-version-check torch==2.13.0
  _torch="$("$_py" -c "import torch; print(torch.__version__, torch.version.cuda or 'cpu')")"
else
  if [ "${_torch#* }" = "cpu" ]; then
    echo "[setup] keeping the torch of $_py: ${_torch% *} (CPU build)"
  else
    echo "[setup] keeping the torch of $_py: ${_torch% *} (CUDA ${_torch#* })"
  fi
fi
_torch_version="${_torch% *}"
_extras="test,demo"
if [ "${_torch#* }" != "cpu" ]; then
  _extras="test,demo,gpu"  # Triton kernels of the losses and metrics (the CUDA torch wheels already bring triton)
fi
if [ -n "${CALIBMONAI_EXTRAS:-}" ]; then
  _extras="$_extras,$CALIBMONAI_EXTRAS"  # optional extras asked for by the caller (scripts/test.sh: the tested ones)
fi
_want="$(cat "$_root/setup.cfg" "$_root/pyproject.toml" | sha256sum | cut -d' ' -f1) $_root torch=$_torch_version extras=$_extras"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ] || ! "$_py" -c "import calibmonai, monai, nilearn, pytest" >/dev/null 2>&1; then
  echo "[setup] installing calibmonai (editable) with its ${_extras//,/, } extras, torch held at $_torch_version"
  _constraints="$(mktemp)"
  echo "torch==$_torch_version" > "$_constraints"
  "$_py" -m pip install -q --disable-pip-version-check -c "$_constraints" -e "$_root[$_extras]"
  rm -f "$_constraints"
  echo "$_want" > "$_stamp"
fi
export CALIBMONAI_PY="$_py"
