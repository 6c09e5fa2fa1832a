"""`calibmonai check-data`: a user's dataset folder read as the bundle's loader will, before any training."""

import os
import subprocess
import sys

from lookalike import write_acdc

from calibmonai.cli import main

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _check(bundle, folder, capsys):
    """Exit status, stdout and stderr of ``calibmonai check-data`` run in this process (``main`` as the console
    script calls it)."""
    try:
        main(["check-data", "--bundle", bundle, "--data", str(folder)])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_data_reports_usable_cases_and_names_broken_files(tmp_path, capsys):
    root = write_acdc(tmp_path / "ACDC")
    # once as a user runs it, in its own process
    r = subprocess.run([sys.executable, "-m", "calibmonai.cli", "check-data", "--bundle", "acdc_seg2d", "--data", str(root)],
                       capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usable" in r.stdout and "Traceback" not in r.stderr
    broken = sorted(root.rglob("training/*/*_frame01_gt.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated label
    code, out, _ = _check("acdc_seg2d", root, capsys)
    assert code == 1 and broken.name in out, out
    code, out, err = _check("acdc_seg2d", tmp_path / "nowhere", capsys)
    assert code not in (0, None) and "nowhere" in (out + err)
    code, _, err = _check("no_such_bundle", root, capsys)
    assert code == 2 and "available bundles" in err and "Traceback" not in err


def test_embedded_datalist_problems_are_reported_with_the_file_named(tmp_path, capsys):
    # the default bundle is the embedded task's (as for infer and preview)
    root = tmp_path / "task"
    root.mkdir()
    (root / "datalist.json").write_text('{"training": [\n')
    code, out, err = _check_default(root, capsys)
    assert code == 1 and f"{root / 'datalist.json'} is not valid JSON" in out + err, out + err
    (root / "datalist.json").write_text('{"training": [{"img": "x.nii.gz"}]}')
    code, out, err = _check_default(root, capsys)
    assert code == 1 and "entry 0 of the 'training' split" in out + err and "['img']" in out + err and "Traceback" not in err
    (root / "datalist.json").write_text('[{"image": "x.nii.gz"}]')
    code, out, err = _check_default(root, capsys)
    assert code == 1 and "must hold a JSON object of splits" in out + err
    (root / "datalist.json").unlink()
    code, out, err = _check_default(root, capsys)
    assert code == 1 and "no datalist.json" in out + err and "--bundle acdc_seg2d" in out + err


def _check_default(folder, capsys):
    try:
        main(["check-data", str(folder)])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
