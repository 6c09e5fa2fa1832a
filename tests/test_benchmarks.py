"""The benchmark scripts run, print their figures and take the arguments ``benchmarks/gpu_all.sh`` gives them.

Their GPU figures are measured only where a GPU is lent, in one short run: a script that fails there on an argument
or a renamed config key costs that run. Here each runs on CPU with tiny sizes, and its printed figures are read
back and checked for consistency (ratios equal to the quotients of the printed times, projections equal to their
formula), never for speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    env.pop("TRITON_INTERPRET", None)  # the scripts time the real paths
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _gpu_all_invocations() -> list[list[str]]:
    """The ``benchmarks/<name>.py ...`` command lines of gpu_all.sh, shell-split (``$data`` left as is)."""
    text = (BENCH / "gpu_all.sh").read_text()
    calls = []
    for line in text.splitlines():
        if line.lstrip().startswith("step ") and "benchmarks/" in line:
            words = shlex.split(line.replace('"$data', '"/DATA'), posix=True)
            i = next(k for k, w in enumerate(words) if w.startswith("benchmarks/"))
            calls.append(words[i:])
    return calls


def _help(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_gpu_all_passes_only_arguments_the_scripts_take(capsys):
    calls = _gpu_all_invocations()
    assert {c[0] for c in calls} == {f"benchmarks/{n}.py" for n in ("metrics", "losses", "training", "inference")}
    for call in calls:
        script, flags = call[0], [w for w in call[1:] if w.startswith("--")]
        help_text = _help(Path(script).stem, capsys)
        assert "--device" in help_text
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"gpu_all.sh passes {flag} to {script}, which does not take it"
    text = (BENCH / "gpu_all.sh").read_text()
    for test_file in re.findall(r"tests/\w+\.py", text):  # the CUDA tests it selects exist
        assert (REPO / test_file).is_file(), test_file
    limits = [int(m) for m in re.findall(r'^step "[^"]+" (\d+) ', text, flags=re.M)]
    assert len(limits) == 6 and sum(limits) <= 480  # the budget: every GPU figure in at most 8 minutes


def test_paper_profile_projection_hand_computed():
    pp = _load("paper_profile")
    # set-up 2 + first epoch 3 + mean(1, 2) x (10 - 1) + evaluation 5
    assert pp.projected_seconds(2.0, [3.0, 1.0, 2.0], 5.0, 10) == pytest.approx(23.5)
    assert pp.projected_seconds(1.0, [4.0], 0.5, 3) == pytest.approx(1.0 + 4.0 * 3 + 0.5)
    # validation every 2 epochs; epoch 1 (5 s) and the first validation (3 s: kernels compiled) are counted once, the
    # other 4 training-only epochs at mean(1, 1) and the other 4 validation epochs at mean(2, 2): 1 + 0.5 + 9 + 11
    times = [5.0, 3.0, 1.0, 2.0, 1.0, 2.0]
    assert pp.projected_seconds(1.0, times, 0.5, 10, 2) == pytest.approx(21.5)
    assert pp.epoch_kinds(times, 2) == ([5.0, 1.0, 1.0], [3.0, 2.0, 2.0])
    # a one-off 40 s in the first validation adds 40 s once, not once per validation of the full schedule
    spiked = [5.0, 43.0, 1.0, 2.0, 1.0, 2.0]
    assert pp.projected_seconds(1.0, spiked, 0.5, 600, 2) - pp.projected_seconds(1.0, times, 0.5, 600, 2) == pytest.approx(40.0)
    assert pp.projected_seconds(0.0, [4.0, 3.0, 1.0], 0.0, 5, 1) == pytest.approx(4.0 + 2.0 * 4)  # every epoch validates
    assert pp.projected_seconds(0.0, [4.0, 3.0], 0.0, 4, 2) == pytest.approx(4.0 + 4.0 + 3.0 + 3.0)  # one of each kind
    assert pp.later_mean([]) != pp.later_mean([])  # NaN
    with pytest.raises(ValueError, match="no validation epoch"):
        pp.projected_seconds(1.0, [1.0, 1.0, 1.0], 0.0, 8, 4)
    with pytest.raises(ValueError, match="no epoch"):
        pp.projected_seconds(1.0, [], 0.0, 3)
    assert pp.parse_sets(["a=1", "network_def::channels=[4, 8]", "b=x"]) == {"a": 1, "network_def::channels": [4, 8], "b": "x"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        pp.parse_sets(["novalue"])
    with pytest.raises(SystemExit, match="multiple of val_interval"):
        pp.main(["--device", "cpu", "--epochs", "30"])  # the profile validates every 20 epochs


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    from calibmonai.data import prepare_mni_tissue

    root = tmp_path_factory.mktemp("bench")
    prepare_mni_tissue(root / "mni", num_subjects=3, split=(1, 1, 1), progress=False)
    return root / "mni"


@pytest.mark.slow
def test_paper_profile_times_and_projects(tiny_task, tmp_path):
    out = tmp_path / "figures.json"
    tiny = ["--set", "val_interval=2", "--set", "volume_repeats=1", "--set", "image_size=[32, 32]", "--set", "network_def::channels=[4, 8, 16, 32]"]
    text = _run("benchmarks/paper_profile.py", "--device", "cpu", "--epochs", "4", "--methods", "ce,mbls:margin=5",
                "--data", str(tiny_task), "--json", str(out), *tiny)  # fmt: skip
    fig = json.loads(out.read_text())
    assert fig["full_epochs"] == 600 and fig["epochs_trained"] == 4 and fig["projected"] is True and fig["amp"] is False
    assert fig["complete"] is True and fig["val_interval"] == 2
    assert len(re.findall(r"^\[(ce|mbls:margin=5)\] set-up .*600 epochs projected: [\d.]+ min$", text, flags=re.M)) == 2  # each method as it ends
    assert [r["method"] for r in fig["methods"]] == ["ce", "mbls:margin=5"]
    for r in fig["methods"]:
        e = r["epoch_s"]
        assert len(e) == 4 and all(t > 0 for t in e) and r["evaluation_s"] > 0
        assert sum(e) == pytest.approx(r["training_s"], rel=0.05)  # the epochs' stamps cover the training
        # epochs 1 and 3 train only, 2 and 4 also validate: 300 of each kind in the 600, the first of each as measured
        assert r["projected_s"] == pytest.approx(r["setup_s"] + e[0] + e[2] * 299 + e[1] + e[3] * 299 + r["evaluation_s"])
    assert fig["total_s"] == pytest.approx(fig["prepare_s"] + sum(r["projected_s"] for r in fig["methods"]))
    m = re.search(r"data preparation included: ([\d.]+) min projected", text)
    assert m and float(m.group(1)) == pytest.approx(fig["total_s"] / 60, abs=0.051)


@pytest.mark.slow
def test_training_and_inference_benchmarks_print_consistent_figures(tiny_task):
    text = _run("benchmarks/training.py", "--device", "cpu", "--dataset_dir", str(tiny_task), "--iterations", "2", "--warmup", "1")
    bundle = float(re.search(r"bundle training .*?([\d.]+) images/s", text).group(1))
    hand = float(re.search(r"hand-written loop.*?([\d.]+) images/s", text).group(1))
    ratio = float(re.search(r"bundle / hand loop\s+([\d.]+)x", text).group(1))
    assert bundle > 0 and hand > 0 and ratio == pytest.approx(bundle / hand, abs=0.006)
    ms_hand = float(re.search(r"hand-written loop.*?([\d.]+) ms/iteration", text).group(1))
    ms_bundle = float(re.search(r"bundle training .*?([\d.]+) ms/iteration", text).group(1))
    m = re.search(r"data loader alone\s+([\d.]+) ms/batch \(([\d.]+)x the hand loop's step\); the rest .*?(-?[\d.]+) ms", text)
    assert m, text
    loader, share, rest = (float(g) for g in m.groups())
    assert loader > 0 and share == pytest.approx(loader / ms_hand, abs=0.006) and rest == pytest.approx(ms_bundle - ms_hand, abs=0.02)
    text = _run("benchmarks/inference.py", "--device", "cpu", "--input_dir", str(tiny_task / "images"), "--repeats", "1")
    whole = float(re.search(r"inference workflow .*?([\d.]+) s per scan", text).group(1))
    network = float(re.search(r"of which the network .*?([\d.]+) s per scan", text).group(1))
    assert "3 scans" in text and 0 < network <= whole


@pytest.mark.slow
def test_metrics_and_losses_benchmarks_print_consistent_figures():
    text = _run("benchmarks/metrics.py", "--device", "cpu", "--size", "24", "--repeats", "1")
    ours = float(re.search(r"calibmonai ECE\+CECE\+Brier\s+([\d.]+) ms", text).group(1))
    monai = float(re.search(r"MONAI CalibrationError\s+([\d.]+) ms", text).group(1))
    faster = float(re.search(r"calibmonai is\s+([\d.]+)x faster", text).group(1))
    assert faster == pytest.approx(monai / ours, rel=0.1, abs=0.06)
    text = _run("benchmarks/losses.py", "--device", "cpu", "--small", "--repeats", "1", "--methods", "ce,mbls,meep_ce_kl")
    for shape in ("3D logits", "2D logits"):
        block = text.split(shape, 1)[1]
        ce = float(re.search(r"F.cross_entropy fwd\+bwd ([\d.]+) ms", block).group(1))
        rows = re.findall(r"^(ce|mbls|meep_ce_kl)\s+([\d.]+)\s+([\d.]+)", block, flags=re.M)[:3]
        assert [r[0] for r in rows] == ["ce", "mbls", "meep_ce_kl"]
        for _, ms, ratio in rows:
            assert float(ratio) == pytest.approx(float(ms) / ce, rel=0.1, abs=0.06)
