"""`calibmonai check-data`: a user's dataset folder read as the bundle's loader will, before any training."""

import os
import subprocess
import sys

from lookalike import write_acdc

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _check(bundle, folder):
    return subprocess.run([sys.executable, "-m", "calibmonai.cli", "check-data", "--bundle", bundle, "--data", str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip


def test_check_data_reports_usable_cases_and_names_broken_files(tmp_path):
    root = write_acdc(tmp_path / "ACDC")
    r = _check("acdc_seg2d", root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usable" in r.stdout and "Traceback" not in r.stderr
    broken = sorted(root.rglob("training/*/*_frame01_gt.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated label
    r = _check("acdc_seg2d", root)
    assert r.returncode == 1 and broken.name in r.stdout, r.stdout
    r = _check("acdc_seg2d", tmp_path / "nowhere")
    assert r.returncode != 0 and "nowhere" in (r.stdout + r.stderr)
    r = _check("no_such_bundle", root)
    assert r.returncode == 2 and "available bundles" in r.stderr
