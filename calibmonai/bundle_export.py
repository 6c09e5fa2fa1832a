"""``calibmonai export-bundle``: a self-contained model-zoo bundle for one dataset x method (x backbone) run.

The export holds plain JSON configs (``train.json``, ``evaluate.json``, ``inference.json``: the composed configs,
flattened, every path derived from ``bundle_root``), ``metadata.json`` (schema 20240725, a version and changelog
entry naming the method, its hyper-parameters and the training data), ``models/model.pt`` and the fitted
calibrators, ``docs/`` and ``LICENSE``. It runs from its own folder, or from anywhere with ``--bundle_root``.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from calibmonai.bundle_tools import as_bool, bundle_dir, bundle_parser, check_config_keys, config_files, run_name
from calibmonai.prediction import check_checkpoint

__all__ = ["export_bundle", "parse_loss_kwargs"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: paths of an export: evaluation and inference read the shipped weights (``<bundle_root>/models``); a new training
#: run writes under ``<bundle_root>/runs/<run>`` and never overwrites them
_EXPORTED = {"runs_dir": "$os.path.join(@bundle_root, 'runs')", "run_dir": "$@bundle_root"}
_EXPORTED_TRAIN = {"run_dir": "$os.path.join(@runs_dir, @method_tag)"}


def parse_loss_kwargs(value: Any) -> dict[str, Any]:
    """Loss hyper-parameters from a dict or a command-line string (``"{'margin': 5.0}"`` or JSON)."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"--loss_kwargs must be a dictionary such as \"{{'margin': 5.0}}\", got {value!r}.") from e
        if isinstance(parsed, Mapping):
            return dict(parsed)
    raise ValueError(f"--loss_kwargs must be a dictionary such as \"{{'margin': 5.0}}\", got {value!r}.")


def export_bundle(
    bundle: str,
    method: str,
    out: str,
    runs_dir: str = "runs",
    loss_kwargs: Any = None,
    backbone: str | None = None,
    untrained: Any = False,
    overwrite: Any = False,
    **config_overrides: Any,
) -> Path:
    """Write a self-contained bundle for one trained run of ``bundle`` x ``method`` (x ``backbone``) to ``out``.

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        method: a method of ``bundles/methods/``.
        out: the export folder (must not exist or be empty unless ``overwrite``).
        runs_dir: where the run was trained (the ``runs_dir`` given to training).
        loss_kwargs: the run's hyper-parameters when not the method fragment's defaults (dict or string).
        backbone: the backbone fragment the run was trained with (default: the bundle's UNet).
        untrained: export without weights (a training-ready bundle); otherwise a run without ``model.pt`` is an error.
        overwrite: replace a non-empty ``out``.
        config_overrides: other config keys the run was trained with (``network_def#channels``, ``image_size``, ...),
            set in every exported config; each must be a key of the training config.

    Every argument is checked before anything is written. Raises ``ValueError``/``FileNotFoundError`` naming the
    problem, ``FileExistsError`` for a non-empty ``out``.
    """
    from calibmonai.losses import get_loss

    untrained = as_bool(untrained, "untrained")
    overwrite = as_bool(overwrite, "overwrite")
    src = bundle_dir(bundle)
    train_files = config_files(str(src), method, backbone=backbone)
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite true to replace it.")
    kwargs_override = parse_loss_kwargs(loss_kwargs)
    check_config_keys(train_files, config_overrides, "calibmonai export-bundle")
    base = {"runs_dir": str(runs_dir), **config_overrides}
    if kwargs_override:
        base["loss_kwargs"] = kwargs_override
    train = bundle_parser(train_files, **base)
    method_name, kwargs = train["method"], dict(train["loss_kwargs"])
    backbone_name = train.get("backbone", "unet")
    num_classes, spatial_dims = train["num_classes"], train.get("spatial_dims", 2)
    try:
        get_loss(method_name, num_classes, spatial_dims, **kwargs)
    except TypeError as e:
        raise ValueError(f"--loss_kwargs {kwargs} do not fit method {method_name!r}: {e}") from e
    tag = run_name(method_name, kwargs, backbone_name)
    run_dir = Path(train.get_parsed_content("run_dir"))
    ckpt = Path(train.get_parsed_content("ckpt_path"))
    if not ckpt.is_file() and not untrained:
        raise FileNotFoundError(
            f"no trained weights for run {tag} at {ckpt}: train it first, point --runs_dir at where it was trained, "
            "or pass --untrained true to export a bundle without weights."
        )
    if ckpt.is_file():  # the weights must fit the exported network, or every user of the export fails
        check_checkpoint(train.get_parsed_content("network_def"), str(ckpt))
    exported = {**_EXPORTED, "method_tag": tag, "loss_kwargs": kwargs}
    configs: dict[str, dict[str, Any]] = {"train": train.get()}
    if (src / "configs" / "evaluate.yaml").is_file():
        configs["evaluate"] = bundle_parser(config_files(str(src), method, "evaluate.yaml", backbone=backbone), **base).get()
    if (src / "configs" / "inference.yaml").is_file():
        configs["inference"] = bundle_parser(config_files(str(src), method, backbone=backbone, workflow="inference.yaml"), **base).get()
    meta = json.loads((src / "configs" / "metadata.json").read_text())

    # ---- everything checked: write into a temporary folder beside out, then move it in place ----
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        for name, config in configs.items():
            config.update(exported)
            if name == "train":
                config.update(_EXPORTED_TRAIN)
            config.pop("_meta_", None)
            (tmp / "configs" / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
        data_note = _training_data(train)
        version = str(meta.get("version", "0.1.0"))
        meta["name"] = f"{meta.get('name', src.name)} [{tag}]"
        meta["changelog"] = {version: f"exported run {tag}: method {method_name}, hyper-parameters {kwargs}, backbone {backbone_name}; trained on {data_note}" + ("" if ckpt.is_file() else " (no weights: untrained export)"), **{k: v for k, v in meta.get("changelog", {}).items() if k != version}}
        meta["calibmonai_method"] = method_name
        meta["calibmonai_loss_kwargs"] = kwargs
        meta["calibmonai_backbone"] = backbone_name
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
        # the bundle's other config files (logging.conf, the split file, ...) travel as they are
        for f in sorted((src / "configs").iterdir()):
            if f.is_file() and f.suffix not in (".yaml", ".yml") and f.name != "metadata.json":
                shutil.copy(f, tmp / "configs" / f.name)
        shutil.copy(src / "LICENSE", tmp / "LICENSE")
        for extra in ("data_license.txt",):
            if (src / "docs" / extra).is_file():
                shutil.copy(src / "docs" / extra, tmp / "docs" / extra)
        copied = []
        if ckpt.is_file():
            shutil.copy(ckpt, tmp / "models" / "model.pt")
            copied.append("model.pt")
        models = run_dir / "models"
        if models.is_dir():
            for f in sorted(models.glob("calibrator_*")):
                if f.suffix in (".pt", ".json"):
                    shutil.copy(f, tmp / "models" / f.name)
                    copied.append(f.name)
        (tmp / "large_files.yml").write_text(
            "large_files:\n" + "".join(f"  - path: \"models/{f}\"\n" for f in copied if f.endswith(".pt")) if any(f.endswith(".pt") for f in copied) else "large_files: []\n"
        )
        readme = (src / "docs" / "README.md").read_text() if (src / "docs" / "README.md").is_file() else f"# {src.name}\n"
        (tmp / "docs" / "README.md").write_text(readme + _export_section(tag, method_name, kwargs, backbone_name, data_note, copied))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _training_data(train: Any) -> str:
    """A one-line description of the training data of a run: dataset name, folder and number of training cases."""
    name = train.get("dataset_name", "?")
    try:
        folder = train.get_parsed_content("dataset_dir")
        datalist = Path(folder) / "datalist.json"
        n = len(json.loads(datalist.read_text()).get("training", [])) if datalist.is_file() else None
    except Exception:  # noqa: BLE001 - a description only
        folder, n = "?", None
    return f"{name} ({folder}" + (f", {n} training cases)" if n is not None else ")")


def _export_section(tag: str, method: str, kwargs: dict, backbone: str, data_note: str, copied: list[str]) -> str:
    weights = ", ".join(copied) if copied else "none (untrained export: run training first)"
    return f"""

## This export

Run `{tag}`: method `{method}`, hyper-parameters `{kwargs}`, backbone `{backbone}`, trained on {data_note}.
Files in `models/`: {weights}.

Install calibmonai (it provides the losses, metrics and inference engine the configs name) from this repository
or a wheel built from it, with the CPU torch first on machines without a GPU:

```bash
pip install torch==2.13.0            # or keep the CUDA torch you have
pip install "{REPO_ROOT}"          # a path of the calibmonai repository (or: pip install calibmonai-*.whl)
```

Then, from this folder (or from anywhere with `--bundle_root <this folder>`):

```bash
python -m monai.bundle run --config_file configs/inference.json --input_dir scans --output_dir out [--calibrator ts]
python -m monai.bundle run --config_file configs/evaluate.json --dataset_dir <prepared data>
python -m monai.bundle run --config_file configs/train.json
python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json
```
"""
