"""``calibmonai export-bundle``: a self-contained model-zoo bundle for one dataset x method (x backbone) run.

The export holds plain JSON configs (``train.json``, ``evaluate.json``, ``inference.json``: the composed configs,
flattened, every path derived from ``bundle_root``), ``metadata.json`` (schema 20240725, a version and changelog
entry naming the method, its hyper-parameters and the training data, and ``eval_metrics`` from the run's own
evaluation of these weights), ``models/model.pt`` and the fitted calibrators, ``large_files.yml`` (each weight file
with its sha256, the way model-zoo's CI and ``monai.bundle download_large_files`` check it), ``docs/`` and ``LICENSE``. It runs from its own folder, or from anywhere with ``--bundle_root``.
``--overwrite`` replaces an empty folder or a previous export only; a folder holding anything an export does not
write (a user's notes, ``runs/`` or ``eval/`` results of running the export) is refused with those files named.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from calibmonai.bundle_tools import REPO_BUNDLES, as_bool, bundle_dir, bundle_parser, check_config_keys, check_profile, config_files, run_name
from calibmonai.progress import progress
from calibmonai.prediction import check_checkpoint, stopped_training_warning

__all__ = ["export_bundle", "parse_loss_kwargs"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: paths of an export: evaluation and inference read the shipped weights (``<bundle_root>/models``); a new training
#: run writes under ``<bundle_root>/runs/<run>`` and never overwrites them
_EXPORTED = {"runs_dir": "$os.path.join(@bundle_root, 'runs')", "run_dir": "$@bundle_root"}
_EXPORTED_TRAIN = {"run_dir": "$os.path.join(@runs_dir, @method_tag)"}

#: what an export writes at its top level; ``--overwrite`` replaces a folder holding nothing else (see _foreign_files)
EXPORT_FILES = ("LICENSE", "large_files.yml")
EXPORT_DIRS = ("configs", "models", "docs")
_EXPORT_CONFIGS = ("train.json", "evaluate.json", "inference.json", "metadata.json")
_EXPORT_DOCS = ("README.md", "data_license.txt")

#: flags that set nothing in an exported bundle, and why (checked before any config key)
_NOT_EXPORTED = {
    **dict.fromkeys(("input", "input_dir", "output", "output_dir", "save_probs"), (
        "the scans, the output folder and the files written are chosen at each run of the exported bundle, not "
        "stored in it: pass them when running it, `calibmonai infer SCANS RESULTS --bundle <export> [--save_probs true]` "
        "or `python -m monai.bundle run --config_file <export>/configs/inference.json --input_dir SCANS --output_dir RESULTS`"
    )),
    "calibrator": (
        "the export ships every calibrator fitted for the run (models/calibrator_*) and each inference run picks "
        "one: `calibmonai infer SCANS RESULTS --bundle <export> --calibrator ts`"
    ),
    **dict.fromkeys(("bundle_root", "run_dir", "ckpt_dir", "ckpt_path", "method_tag"), (
        "export-bundle sets it: the exported configs find their weights in <export>/models and write under "
        "<export>, from wherever --bundle_root points when they run"
    )),
}  # fmt: skip
#: config keys of training data that an exported inference config must not take (there they follow --input_dir)
_TRAINING_ONLY = ("dataset_dir",)
#: metadata.json ``eval_metrics`` of an export: its key -> the key of the run's evaluation ``summary.csv``
EVAL_METRICS = {"mean_dice": "dsc_mean", "mean_hd95": "hd95_mean", "ece": "ece", "cece": "cece", "brier": "brier", "nll": "nll"}


def _root_key(key: Any) -> str:
    """The top-level key of a config id: ``network_def#channels`` / ``network_def::channels`` -> ``network_def``."""
    return str(key).replace("::", "#").split("#", 1)[0]


def _export_config_names() -> set[str]:
    """Every file name an export may hold in ``configs/``: the exported JSON configs and the other config files
    (``logging.conf``, ``split.json``, ...) that any repository bundle ships and an export copies."""
    names = set(_EXPORT_CONFIGS)
    if REPO_BUNDLES.is_dir():
        for configs in REPO_BUNDLES.glob("*/configs"):
            names.update(f.name for f in configs.iterdir() if f.is_file() and f.suffix not in (".yaml", ".yml"))
    return names


def _foreign_files(folder: Path, config_names: set[str] | None = None) -> list[str]:
    """Paths (relative to ``folder``; folders end with ``/``) that ``export_bundle`` does not write: anything beside
    ``configs/``, ``models/``, ``docs/``, ``LICENSE`` and ``large_files.yml``, and in those folders anything but the
    exported configs, the weights (``model.pt`` and its TorchScript ``model.ts``), the calibrators
    (``calibrator_*.pt|json``, shipped or fitted later) and the docs. Results of running the export (``runs/``,
    ``eval/``, predictions) are not part of it."""
    config_names = _export_config_names() if config_names is None else config_names

    def shipped(sub: str, f: Path) -> bool:
        if not f.is_file():
            return False
        if sub == "configs":
            return f.name in config_names
        if sub == "docs":
            return f.name in _EXPORT_DOCS
        return f.name in ("model.pt", "model.ts") or (f.name.startswith("calibrator_") and f.suffix in (".pt", ".json"))

    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name in EXPORT_FILES and entry.is_file():
            continue
        if entry.name in EXPORT_DIRS and entry.is_dir():
            foreign += [f"{entry.name}/{f.name}{'/' if f.is_dir() else ''}" for f in sorted(entry.iterdir()) if not shipped(entry.name, f)]
            continue
        foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _is_export(folder: Path) -> bool:
    """Whether ``folder/configs/metadata.json`` is one that ``export_bundle`` wrote (it names the exported method)."""
    try:
        return "calibmonai_method" in json.loads((folder / "configs" / "metadata.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that ``export_bundle`` must not write: a file; a non-empty folder without ``overwrite``;
    with ``overwrite``, a folder that is neither empty nor a previous export holding only what an export holds
    (:func:`_foreign_files`): it would be deleted with it.

    Raises:
        FileExistsError: naming the folder, a few of the files that would be lost and the fix.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out.")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite true to replace it.")
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"--overwrite replaces only an empty folder or a previous export, and {out} holds {len(foreign)} file(s) "
            f"an export does not write: {shown}. Move them out of {out} or choose another --out; nothing was written."
        )
    if not _is_export(out):
        raise FileExistsError(
            f"--overwrite replaces only an empty folder or a previous export, and {out} is not one (its "
            "configs/metadata.json was not written by `calibmonai export-bundle`). Choose another --out; nothing was written."
        )


def _check_export_overrides(overrides: Mapping[str, Any], workflows: Mapping[str, list[str]], command: str) -> dict[str, dict[str, Any]]:
    """Split the config overrides of an export over its configs: each key goes to every config (``train``,
    ``evaluate``, ``inference``) that has its top-level key, so the export takes the settings of
    ``calibmonai infer`` (``--inference_spacing``) as well as those of training (``--network_def#channels``).

    Raises:
        ValueError: for a key that no exported config has (naming every key they have) or that sets nothing in an
            export (:data:`_NOT_EXPORTED`, saying why).
    """
    for key in overrides:
        root = _root_key(key)
        if root in _NOT_EXPORTED:
            raise ValueError(f"--{key} does not apply to `{command}`: {_NOT_EXPORTED[root]}.")
    union = list(dict.fromkeys(f for files in workflows.values() for f in files))
    check_config_keys(union, overrides, command)
    per_workflow = {}
    for name, files in workflows.items():
        keys = bundle_parser(files).config
        skip = _TRAINING_ONLY if name == "inference" else ()
        per_workflow[name] = {k: v for k, v in overrides.items() if _root_key(k) in keys and _root_key(k) not in skip}
    return per_workflow


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
    profile: str | None = None,
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
        profile: a profile of the bundle the run was trained under (``configs/profiles/<profile>.yaml``, e.g. the
            demo's ``paper``): composed into the exported training and evaluation configs, and the weights exported
            are the ones its evaluation reads (the profile's ``ckpt_path``).
        overwrite: replace a non-empty ``out`` that is a previous export (only the files an export writes: see
            :func:`check_export_target`); a folder holding anything else is refused, not deleted.
        config_overrides: other config keys: those the run was trained with (``network_def#channels``,
            ``image_size``, ...) and the inference settings ``calibmonai infer`` takes (``inference_spacing``,
            ``output_ext``, ...), each set in every exported config that has its key. Each must be a key of one of
            them; the choices of each inference run (``input_dir``, ``output_dir``, ``calibrator``, ``save_probs``)
            and the paths the export sets (``bundle_root``, ``run_dir``, ...) are refused, saying why.

    Every argument is checked before anything is written. Raises ``ValueError``/``FileNotFoundError`` naming the
    problem, ``FileExistsError`` for a non-empty ``out`` (without ``overwrite``) or one that is not a previous export.
    """
    from calibmonai.losses import get_loss

    untrained = as_bool(untrained, "untrained")
    overwrite = as_bool(overwrite, "overwrite")
    src = bundle_dir(bundle)
    profile = check_profile(str(src), profile)
    extra = [f"profiles/{profile}.yaml"] if profile else []
    workflows = {"train": config_files(str(src), method, *extra, backbone=backbone)}
    if (src / "configs" / "evaluate.yaml").is_file():
        workflows["evaluate"] = config_files(str(src), method, *extra, "evaluate.yaml", backbone=backbone)
    if (src / "configs" / "inference.yaml").is_file():
        workflows["inference"] = config_files(str(src), method, backbone=backbone, workflow="inference.yaml")
    dst = Path(out)
    check_export_target(dst, overwrite)
    kwargs_override = parse_loss_kwargs(loss_kwargs)
    per_workflow = _check_export_overrides(config_overrides, workflows, "calibmonai export-bundle")
    base = {"runs_dir": str(runs_dir)}
    if kwargs_override:
        base["loss_kwargs"] = kwargs_override
    train = bundle_parser(workflows["train"], **base, **per_workflow["train"])
    method_name, kwargs = train["method"], dict(train["loss_kwargs"])
    backbone_name = train.get("backbone", "unet")
    num_classes, spatial_dims = train["num_classes"], train.get("spatial_dims", 2)
    try:
        get_loss(method_name, num_classes, spatial_dims, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--loss_kwargs {kwargs} do not fit method {method_name!r}: {e}") from None
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
        stopped = stopped_training_warning(str(ckpt))
        if stopped:
            progress(f"[export] WARNING: {stopped}; exported as they are", "calibmonai.export")
    exported = {**_EXPORTED, "method_tag": tag, "loss_kwargs": kwargs}
    parsers = {name: bundle_parser(files, **base, **per_workflow[name]) for name, files in workflows.items() if name != "train"}
    eval_dir = _eval_dir(parsers.get("evaluate"), run_dir)  # resolved before the configs are changed for the export
    configs: dict[str, dict[str, Any]] = {"train": train.get(), **{name: parser.get() for name, parser in parsers.items()}}
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
            (tmp / "configs" / f"{name}.json").write_text(json.dumps(config, indent=4) + "\n")
        data_note = _training_data(train)
        version = str(meta.get("version", "0.1.0"))
        meta["name"] = f"{meta.get('name', src.name)} [{tag}]"
        meta["changelog"] = {version: f"exported run {tag}: method {method_name}, hyper-parameters {kwargs}, backbone {backbone_name}; trained on {data_note}" + ("" if ckpt.is_file() else " (no weights: untrained export)"), **{k: v for k, v in meta.get("changelog", {}).items() if k != version}}
        meta["eval_metrics"], eval_note = _run_eval_metrics(eval_dir, ckpt)
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
        stale = _stale_calibrators(models, ckpt) if models.is_dir() and ckpt.is_file() else set()
        if models.is_dir():
            for f in sorted(models.glob("calibrator_*")):
                if f.suffix in (".pt", ".json") and f.stem not in stale:
                    shutil.copy(f, tmp / "models" / f.name)
                    copied.append(f.name)
        (tmp / "large_files.yml").write_text(_large_files_yml(tmp, [f for f in copied if f.endswith(".pt")]))
        readme = (src / "docs" / "README.md").read_text() if (src / "docs" / "README.md").is_file() else f"# {src.name}\n"
        (tmp / "docs" / "README.md").write_text(readme + _export_section(tag, method_name, kwargs, backbone_name, data_note, copied, eval_note))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _stale_calibrators(models: Path, ckpt: Path) -> set[str]:
    """The calibrators of a run (``calibrator_<name>`` stems) fitted on other weights than ``ckpt``, the checkpoint
    exported: shipping them would make every ``--calibrator`` run of the export fail (or, unrecorded, mislead).
    Each is named in a message."""
    from calibmonai.calibration.base import file_sha256, load_calibrator

    sha, stale = file_sha256(str(ckpt)), set()
    for f in sorted(models.glob("calibrator_*.pt")):
        try:
            stale_one = load_calibrator(f).fitted_on_other_weights(sha)
        except (ValueError, OSError):
            stale_one = False
        if stale_one:
            stale.add(f.stem)
            progress(f"[export] {f.name} not exported: it was fitted on other weights than {ckpt} (run 'calibrate' on them to ship it)", "calibmonai.export")
    return stale


def _large_files_yml(bundle: Path, weights: list[str]) -> str:
    """``large_files.yml`` listing each weight file of ``bundle/models`` with its sha256. ``url`` is left empty: the
    files are in the bundle, and ``monai.bundle download_large_files`` (as model-zoo's CI does) checks the hash of a
    file that exists and downloads nothing; whoever hosts a file elsewhere (model-zoo wants files over 25 MB hosted
    outside its repository) writes its address there."""
    from calibmonai.calibration.base import file_sha256

    head = (
        "# The weights shipped in models/, with their sha256: `python -m monai.bundle download_large_files --bundle_path .`\n"
        "# checks them. To publish a file hosted elsewhere (model-zoo: files over 25 MB), put its address in `url`.\n"
    )
    if not weights:
        return head + "large_files: []\n"
    rows = "".join(
        f'  - path: "models/{f}"\n    url: ""\n    hash_val: "{file_sha256(str(bundle / "models" / f))}"\n    hash_type: "sha256"\n' for f in weights
    )
    return head + "large_files:\n" + rows


def _eval_dir(evaluate: Any, run_dir: Path) -> Path:
    """Where the run's evaluation (without calibrator) wrote its ``summary.csv``: the ``eval_dir`` of the evaluate
    config's parser ``evaluate`` (``None``: a bundle without one), else ``<run_dir>/eval``."""
    if evaluate is not None and "eval_dir" in evaluate:
        return Path(evaluate.get_parsed_content("eval_dir"))
    return run_dir / "eval"


def _run_eval_metrics(eval_dir: Path, ckpt: Path) -> tuple[dict[str, float], str]:
    """``metadata.json``'s ``eval_metrics`` for the exported weights (:data:`EVAL_METRICS`, test-split means) from the
    run's evaluation ``eval_dir/summary.csv``, and a sentence for the export's README. Empty, and the sentence says
    why, when the run was not evaluated or its evaluation is older than the weights (it measured other weights)."""
    import math

    from calibmonai.meep_table import read_summary

    summary = eval_dir / "summary.csv"
    if not ckpt.is_file():
        return {}, "none (no weights exported)"
    if not summary.is_file():
        return {}, f"none: the run was not evaluated (no {summary}); run its 'evaluate' workflow, then export again"
    if summary.stat().st_mtime < ckpt.stat().st_mtime:
        return {}, f"none: {summary} is older than the exported weights (it evaluated earlier ones); evaluate again, then export"
    try:
        values = read_summary(summary)
    except ValueError as e:
        return {}, f"none: {e}"
    # only finite values: a metric undefined on every case (NaN) is left out, JSON has no NaN
    metrics = {key: round(values[column], 6) for key, column in EVAL_METRICS.items() if math.isfinite(values.get(column, math.nan))}
    shown = ", ".join(f"{k} {v:g}" for k, v in metrics.items())
    return metrics, f"{shown} (means over the test cases of the run's evaluation, {summary.parent.name}/summary.csv)"


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


def _export_section(tag: str, method: str, kwargs: dict, backbone: str, data_note: str, copied: list[str], eval_note: str = "") -> str:
    weights = ", ".join(copied) if copied else "none (untrained export: run training first)"
    return f"""

## This export

Run `{tag}`: method `{method}`, hyper-parameters `{kwargs}`, backbone `{backbone}`, trained on {data_note}.
Files in `models/`: {weights}.
Test metrics of these weights (`eval_metrics` in `configs/metadata.json`): {eval_note or "none"}.

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
