"""``calibmonai export-bundle``: a self-contained model-zoo bundle for one dataset x method combination."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from calibmonai.bundle_tools import bundle_dir, config_files, run_name

__all__ = ["export_bundle"]


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
