"""Helpers used by the bundle configs: run names, locating bundles, running workflows, exporting bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from calibmonai.losses import METHODS

__all__ = ["run_name", "bundle_dir", "method_names", "config_files", "inference_config_files", "run_workflow", "export_bundle"]

REPO_BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def run_name(method: str, loss_kwargs: Mapping[str, Any] | None = None) -> str:
    """Output-folder name of a run: the method and its hyper-parameters, e.g. ``mbls_alpha0.1_margin10.0``."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available methods: {', '.join(METHODS)}.")
    parts = [method] + [f"{k}{v}" for k, v in sorted((loss_kwargs or {}).items())]
    return "_".join(parts)


def bundle_dir(bundle: str) -> Path:
    """Path of a bundle: a folder, or the name of one under the repository's ``bundles/``."""
    path = Path(bundle)
    if (path / "configs").is_dir():
        return path
    candidate = REPO_BUNDLES / bundle
    if (candidate / "configs").is_dir():
        return candidate
    available = sorted(p.name for p in REPO_BUNDLES.iterdir() if (p / "configs").is_dir()) if REPO_BUNDLES.is_dir() else []
    raise FileNotFoundError(f"bundle {bundle!r} not found; available bundles: {available}")


def method_names(bundle: str) -> list[str]:
    return sorted(p.stem for p in (bundle_dir(bundle) / "configs" / "methods").glob("*.yaml"))


def config_files(bundle: str, method: str, *extra: str) -> list[str]:
    """``[train.yaml, methods/<method>.yaml, *extra]`` of a bundle, checking each exists."""
    root = bundle_dir(bundle) / "configs"
    method_file = root / "methods" / f"{method}.yaml"
    if not method_file.is_file():
        raise ValueError(f"Unknown method {method!r} for bundle {bundle}; available methods: {', '.join(method_names(bundle))}.")
    files = [root / "train.yaml", method_file] + [root / e for e in extra]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"config file {f} does not exist")
    return [str(f) for f in files]


def inference_config_files(bundle: str, method: str, runs_dir: str = "runs") -> tuple[list[str], dict[str, Any]]:
    """Config files and overrides of the inference workflow, for a repository bundle (train + method +
    inference) or an exported bundle folder (its ``configs/inference.json``, run from that folder's paths)."""
    exported = Path(bundle) / "configs" / "inference.json"
    if exported.is_file():
        root = Path(bundle).resolve()
        return [str(exported)], {"run_dir": str(root), "ckpt_path": str(root / "models" / "model.pt")}
    return config_files(bundle, method, "inference.yaml"), {"runs_dir": runs_dir}


def run_workflow(run_id: str, files: Sequence[str], **overrides: Any) -> None:
    """Run a bundle workflow in this process, like ``python -m monai.bundle run <run_id> --config_file ...``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    for k, v in overrides.items():
        parser[k] = v
    parser.get_parsed_content(run_id)


def export_bundle(bundle: str, method: str, out: str, overwrite: bool = False) -> Path:
    """Write a self-contained bundle directory for one dataset x method combination.

    ``out/configs/{train,evaluate,inference}.json`` (the composed configs, flattened to plain JSON),
    ``metadata.json`` naming the method, ``logging.conf``, ``docs/README.md``, ``LICENSE`` and
    ``models/model.pt`` when the run was trained. It runs from inside ``out`` with
    ``python -m monai.bundle run training --config_file configs/train.json``.
    """
    from monai.bundle import ConfigParser

    src = bundle_dir(bundle)
    dst = Path(out)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    (dst / "configs").mkdir(parents=True, exist_ok=True)
    (dst / "models").mkdir(exist_ok=True)
    (dst / "docs").mkdir(exist_ok=True)
    standalone = {"runs_dir": ".", "dataset_dir": "data", "run_dir": ".", "method_tag": run_name(*_method_of(src, method))}
    for name, extra in (("train", []), ("evaluate", ["evaluate.yaml"]), ("inference", ["inference.yaml"])):
        files = config_files(str(src), method, *[e for e in extra if (src / "configs" / e).is_file()])
        parser = ConfigParser()
        parser.read_config(files)
        config = parser.get()
        config.update(standalone)
        (dst / "configs" / f"{name}.json").write_text(json.dumps(config, indent=2))
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    meta["name"] = f"{meta.get('name', src.name)} ({method})"
    meta["calibmonai_method"] = method
    meta["calibmonai_loss_kwargs"] = _method_of(src, method)[1]
    (dst / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    for f in ("logging.conf",):
        if (src / "configs" / f).is_file():
            shutil.copy(src / "configs" / f, dst / "configs" / f)
    shutil.copy(src / "LICENSE", dst / "LICENSE")
    readme = (src / "docs" / "README.md").read_text()
    (dst / "docs" / "README.md").write_text(f"{readme}\n\n## This export\n\nMethod: `{method}`. Run from this folder:\n\n"
        "```bash\npip install calibmonai\npython -m monai.bundle run training --config_file configs/train.json\n"
        "python -m monai.bundle run evaluate --config_file configs/evaluate.json\n"
        "python -m monai.bundle run inference --config_file configs/inference.json --input_dir scans --output_dir out\n```\n")  # fmt: skip
    parser = ConfigParser()
    parser.read_config(config_files(str(src), method))
    trained = Path(parser.get_parsed_content("ckpt_path"))
    if trained.is_file():
        shutil.copy(trained, dst / "models" / "model.pt")
    return dst


def _method_of(src: Path, method: str) -> tuple[str, dict[str, Any]]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(str(src), method))
    return parser["method"], dict(parser["loss_kwargs"])
