"""scripts/setup_env.sh keeps a CUDA torch: run the script against a fake python that records every pip call
(nothing is installed, nothing downloaded; each run takes milliseconds)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup_env.sh"

# A stand-in for python: "import torch" prints FAKE_TORCH ("<version> <cuda>"; fails when it is empty, until a
# "pip install torch==2.13.0" wrote FAKE_STATE), the calibmonai import check fails (so the install step runs),
# "-m pip" logs its arguments and the content of its constraints file, "-m venv" logs its flags and creates
# <dir>/bin/python as a copy of this fake.
FAKE_PYTHON = r"""#!/usr/bin/env bash
log="${FAKE_LOG:?}"
if [ "$1" = "-c" ]; then
  case "$2" in
    *"import torch"*)
      if [ -s "${FAKE_STATE:-/nonexistent}" ]; then cat "$FAKE_STATE"; exit 0; fi  # after a CPU torch "install"
      [ -n "${FAKE_TORCH:-}" ] || exit 1; echo "$FAKE_TORCH"; exit 0 ;;
    *"import calibmonai"*) exit 1 ;;
    *) exit 0 ;;
  esac
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >> "$log"
  prev=""
  for a in "$@"; do
    if [ "$prev" = "-c" ]; then echo "constraints: $(cat "$a")" >> "$log"; fi
    prev="$a"
  done
  for a in "$@"; do
    if [ "$a" = "torch==2.13.0" ]; then echo "${FAKE_TORCH_AFTER_INSTALL:-2.13.0+cpu cpu}" > "$FAKE_STATE"; fi
  done
  exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  echo "venv $*" >> "$log"
  dir="${@: -1}"
  mkdir -p "$dir/bin"
  cp "$0" "$dir/bin/python"
  exit 0
fi
exit 0
"""


def _fake_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _run(tmp_path: Path, torch_line: str, **env_extra: str) -> tuple[str, str]:
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FAKE_LOG": str(log),
        "FAKE_TORCH": torch_line,
        "FAKE_STATE": str(tmp_path / "state"),
        **env_extra,
    }
    out = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" && echo "CALIBMONAI_PY=$CALIBMONAI_PY"'],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout, log.read_text()


def test_existing_python_with_cuda_torch_is_kept(tmp_path):
    py = _fake_python(tmp_path / "conda" / "bin" / "python")
    stdout, calls = _run(tmp_path, "2.5.1+cu121 12.1", CALIBMONAI_PYTHON=str(py))
    assert f"CALIBMONAI_PY={py}" in stdout
    assert "keeping the torch" in stdout and "2.5.1+cu121 (CUDA 12.1)" in stdout
    assert "torch==2.13.0" not in calls  # the CPU build is never installed over it
    assert "venv" not in calls  # no venv is created
    # calibmonai goes in with the GPU extra and torch held at the present version
    assert "-e " + str(ROOT) + "[test,demo,gpu]" in calls
    assert "constraints: torch==2.5.1+cu121" in calls
    # the stamp lives outside the repository, and a second run installs nothing
    assert list((tmp_path / "cache" / "calibmonai").glob("install-stamp-*"))


def test_existing_venv_with_cuda_torch_is_kept(tmp_path):
    venv = tmp_path / "gpu-venv"
    _fake_python(venv / "bin" / "python")
    stdout, calls = _run(tmp_path, "2.4.0+cu124 12.4", CALIBMONAI_VENV=str(venv))
    assert f"CALIBMONAI_PY={venv / 'bin' / 'python'}" in stdout
    assert "torch==2.13.0" not in calls and "venv " not in calls
    assert "constraints: torch==2.4.0+cu124" in calls
    assert (venv / ".calibmonai-install-stamp").read_text().strip().endswith("torch=2.4.0+cu124 extras=test,demo,gpu")


def test_system_site_packages_venv_sees_the_base_cuda_torch(tmp_path):
    base = _fake_python(tmp_path / "base" / "bin" / "python")
    venv = tmp_path / "new-venv"
    stdout, calls = _run(
        tmp_path, "2.5.1+cu121 12.1", CALIBMONAI_VENV=str(venv), CALIBMONAI_SYSTEM_SITE_PACKAGES="1", CALIBMONAI_BASE_PYTHON=str(base)
    )
    assert f"venv -m venv --system-site-packages {venv}" in calls
    assert "torch==2.13.0" not in calls and "constraints: torch==2.5.1+cu121" in calls
    assert "keeping the torch" in stdout


def test_environment_without_torch_gets_the_cpu_build_first(tmp_path):
    venv = tmp_path / "empty-venv"
    _fake_python(venv / "bin" / "python")
    stdout, calls = _run(tmp_path, "", CALIBMONAI_VENV=str(venv))
    lines = calls.splitlines()
    cpu = [i for i, line in enumerate(lines) if line.startswith("pip") and "torch==2.13.0" in line.split()]
    pkg = [i for i, line in enumerate(lines) if line.startswith("pip") and "-e" in line.split()]
    assert cpu and pkg and cpu[0] < pkg[0]  # the pinned CPU torch first, then the package
    assert "constraints: torch==2.13.0+cpu" in calls
    assert "[test,demo]" in calls and "gpu" not in calls


def test_up_to_date_stamp_skips_every_install(tmp_path):
    venv = tmp_path / "venv"
    _fake_python(venv / "bin" / "python")
    _run(tmp_path, "2.5.1+cu121 12.1", CALIBMONAI_VENV=str(venv))
    # make the fake's import check succeed: the stamp is current and the packages import -> nothing runs
    fake = venv / "bin" / "python"
    fake.write_text(fake.read_text().replace('*"import calibmonai"*) exit 1 ;;', '*"import calibmonai"*) exit 0 ;;'))
    _, calls = _run(tmp_path, "2.5.1+cu121 12.1", CALIBMONAI_VENV=str(venv))
    assert "pip" not in calls


def test_broken_calibmonai_python_is_refused(tmp_path):
    out = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"'], capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CALIBMONAI_PYTHON": str(tmp_path / "nope" / "python")},
    )  # fmt: skip
    assert out.returncode != 0 and "not a working python interpreter" in out.stderr


@pytest.mark.parametrize("doc", ["README.md"])
def test_readme_documents_gpu_users(doc):
    text = (ROOT / doc).read_text()
    assert "## GPU users" in text and "CALIBMONAI_PYTHON" in text and "CALIBMONAI_SYSTEM_SITE_PACKAGES" in text
