"""Helpers used by the bundle configs: run names, locating bundles and shared fragments, running workflows.

Layout of ``bundles/``: one folder per dataset bundle (model-zoo layout: ``configs/``, ``docs/``, ``models/``,
``LICENSE``) and the fragments every bundle shares, one place per thing:
``methods/<method>.yaml`` (the loss), ``backbones/<name>.yaml`` (the network), ``calibrate/<name>.yaml``
(post-hoc calibrator). A run composes them: ``[<bundle>/configs/train.yaml, methods/mbls.yaml]``.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from calibmonai.losses import METHODS

__all__ = [
    "run_name", "bundle_dir", "method_names", "backbone_names", "fragment", "config_files", "inference_config_files",
    "bundle_parser", "check_config_keys", "unknown_config_keys", "nearest_keys", "check_command_line_keys", "run_workflow", "cause_chain", "as_bool", "REPO_BUNDLES",
]  # fmt: skip

REPO_BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
#: folders of ``bundles/`` that hold shared fragments, not bundles
FRAGMENT_KINDS = ("methods", "backbones", "calibrate")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", "none", ""}


def as_bool(value: Any, name: str = "value") -> bool:
    """A boolean from a config or a command line: ``True``/``False``, ``1``/``0`` or the strings
    true/false/yes/no/on/off/1/0 (any case). Anything else raises ``ValueError`` naming the flag and the value
    (``--overwrite false`` must not be read as the non-empty, hence true, string ``'false'``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"--{name} expects a boolean (true/false), got {value!r}.")


def _float_parameters(method: str) -> set[str]:
    """The hyper-parameters of ``method`` whose default is a float (the method's registry defaults, then its loss's
    signature)."""
    floats = {k for k, v in METHODS[method].defaults.items() if isinstance(v, float)}
    try:
        params = inspect.signature(METHODS[method].build).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return floats
    return floats | {p.name for p in params if isinstance(p.default, float)}


def run_name(method: str, loss_kwargs: Mapping[str, Any] | None = None, backbone: str | None = None) -> str:
    """Output-folder name of a run: the method, its hyper-parameters and (when not the default UNet) the backbone,
    e.g. ``mbls_alpha0.1_margin10.0`` or ``mbls_alpha0.1_margin10.0_attention_unet``.

    A whole number given for a hyper-parameter whose default is a float is written as that float (a margin given as
    ``5`` names the run ``margin5.0``, as ``5.0`` does), so that one setting always names one folder."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available methods: {', '.join(METHODS)}.")
    floats = _float_parameters(method)

    def spelled(key: str, value: Any) -> str:
        if key in floats and isinstance(value, int) and not isinstance(value, bool):
            return f"{key}{float(value)}"
        return f"{key}{value}"

    parts = [method] + [spelled(k, v) for k, v in sorted((loss_kwargs or {}).items())]
    if backbone not in (None, "", "unet"):
        parts.append(str(backbone))
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


def _fragment_names(kind: str) -> list[str]:
    return sorted(p.stem for p in (REPO_BUNDLES / kind).glob("*.yaml"))


def method_names(bundle: str | None = None) -> list[str]:
    """The method fragments (``bundles/methods/*.yaml``), shared by every bundle."""
    if bundle is not None:
        bundle_dir(bundle)  # a bad bundle name still raises
    return _fragment_names("methods")


def backbone_names() -> list[str]:
    """The backbone fragments (``bundles/backbones/*.yaml``), shared by every bundle."""
    return _fragment_names("backbones")


def fragment(kind: str, name: str) -> Path:
    """Path of the shared fragment ``bundles/<kind>/<name>.yaml``; an unknown name raises ``ValueError`` listing
    the available ones."""
    if kind not in FRAGMENT_KINDS:
        raise ValueError(f"Unknown fragment kind {kind!r}; available: {', '.join(FRAGMENT_KINDS)}.")
    path = REPO_BUNDLES / kind / f"{name}.yaml"
    if not path.is_file():
        singular = {"methods": "method", "backbones": "backbone", "calibrate": "calibrator"}[kind]
        raise ValueError(f"Unknown {singular} {name!r}; available {kind}: {', '.join(_fragment_names(kind))}.")
    return path


def _config_file(root: Path, name: str) -> Path:
    """A config file of a bundle (``configs/<name>``) or a shared fragment (``bundles/<kind>/<file>``)."""
    local = root / "configs" / name
    if local.is_file():
        return local
    kind, _, stem = name.partition("/")
    if kind in FRAGMENT_KINDS and stem:
        return fragment(kind, Path(stem).stem)
    raise FileNotFoundError(f"config file {local} does not exist")


def config_files(bundle: str, method: str, *extra: str, backbone: str | None = None, workflow: str = "train.yaml") -> list[str]:
    """``[<bundle>/configs/train.yaml, methods/<method>.yaml, (backbones/<backbone>.yaml), *extra]``, each checked.

    ``extra`` names files of the bundle's ``configs/`` (``evaluate.yaml``) or shared fragments
    (``calibrate/ts.yaml``)."""
    root = bundle_dir(bundle)
    files = [_config_file(root, workflow), fragment("methods", method)]
    if backbone not in (None, ""):
        files.append(fragment("backbones", str(backbone)))
    files += [_config_file(root, e) for e in extra]
    return [str(f) for f in files]


def inference_config_files(bundle: str, method: str, runs_dir: str = "runs", backbone: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Config files and overrides of the inference workflow, for a repository bundle (its stand-alone
    ``inference.yaml`` + the method and backbone fragments, which only locate the trained run) or an exported
    bundle folder (its ``configs/inference.json`` with ``bundle_root`` set to that folder)."""
    exported = Path(bundle) / "configs" / "inference.json"
    if exported.is_file():
        return [str(exported)], {"bundle_root": str(Path(bundle).resolve())}
    return config_files(bundle, method, backbone=backbone, workflow="inference.yaml"), {"runs_dir": runs_dir}


#: the values of ``--profile`` that mean "no profile"
NO_PROFILE = (None, "", "none", "None")


def profile_names(bundle: str) -> list[str]:
    """The profiles of ``bundle``: ``configs/profiles/<name>.yaml``."""
    return sorted(p.stem for p in (bundle_dir(bundle) / "configs" / "profiles").glob("*.yaml"))


def check_profile(bundle: str, profile: Any, alternatives: str = "") -> str | None:
    """``profile`` as a profile name of ``bundle``, or ``None`` for no profile (``None``, ``""``, ``"none"``).

    Raises:
        ValueError: ``--profile 'papr' is not a profile of bundle ...; profiles: paper`` (+ ``alternatives``).
    """
    if profile in NO_PROFILE:
        return None
    names = profile_names(bundle)
    if not isinstance(profile, str) or profile not in names:
        raise ValueError(f"--profile {profile!r} is not a profile of bundle {bundle!r}; profiles: {', '.join(names) or 'none'}{alternatives}.")
    return profile


def profile_overrides(bundle: str, profile: str, files: Sequence[str]) -> dict[str, Any]:
    """The settings of ``bundle``'s profile ``profile`` that the config composed of ``files`` has, as overrides
    (raw values: ``dataset_name``, ``ckpt_path`` = the profile's evaluated ``model_final.pt``, ...): the run
    folder and the weights of a profile's run for a workflow the profile file cannot be composed onto, whose
    config has no training sections (``inference.yaml``).

    Raises:
        ValueError: ``profile`` is not a profile of ``bundle``, naming its profiles.
    """
    from monai.bundle import ConfigParser

    check_profile(bundle, profile)
    raw = ConfigParser.load_config_file(str(bundle_dir(bundle) / "configs" / "profiles" / f"{profile}.yaml"))
    config = bundle_parser(files).config
    return {k: v for k, v in raw.items() if "::" not in k and "#" not in k and k in config}


def bundle_parser(files: Sequence[str], **overrides: Any) -> Any:
    """A ``monai.bundle.ConfigParser`` over ``files`` (composed in order) with ``overrides`` set, as
    ``--config_file "[...]" --key value`` set them (ids ``a#b`` or ``a::b``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    for k, v in overrides.items():
        parser[k] = v
    return parser


def unknown_config_keys(files: Sequence[str], keys: Any, allowed: Any = ()) -> tuple[list[str], list[str]]:
    """``(unknown, config_keys)``: the ``keys`` whose top-level key (before ``#``/``::``) is neither in the config
    composed of ``files`` nor in ``allowed``, and the config's own top-level keys (sorted, private ones left out)."""
    config = bundle_parser(files).config
    unknown = [str(k) for k in keys if (root := str(k).replace("::", "#").split("#", 1)[0]) not in config and root not in allowed]
    return unknown, sorted(str(k) for k in config if not str(k).startswith("_"))


def nearest_keys(name: str, keys: Sequence[str], n: int = 3) -> list[str]:
    """The ``keys`` closest to a mistyped ``name`` (its top-level part), for a "did you mean" hint."""
    return difflib.get_close_matches(str(name).replace("::", "#").split("#", 1)[0], list(keys), n=n, cutoff=0.6)


def check_config_keys(files: Sequence[str], overrides: Mapping[str, Any], command: str) -> None:
    """Refuse an override whose top-level key (before ``#``/``::``) is not in the config composed of ``files``
    (a mistyped flag would otherwise add a key nothing reads), naming the config's keys."""
    if not overrides:
        return
    unknown, keys = unknown_config_keys(files, overrides)
    if unknown:
        raise ValueError(
            f"unknown flag --{unknown[0]} for `{command}`: neither a flag of the command nor a key of its config "
            f"({', '.join(map(str, files))}); config keys: {', '.join(keys)}."
        )


#: arguments of ``monai.bundle run`` itself and the overrides its ``--tracking mlflow`` settings read (not config keys)
_RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
     "workflow_type", "workflow_name", "properties_path", "output_dir", "tracking_uri", "experiment_name", "run_name",
     "save_execute_config"}
)  # fmt: skip


def _split_command_line(tokens: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``({name: value}, positionals)`` of a Fire command line: the ``--name value`` / ``--name=value`` flags (a
    flag without a value is ``True``) and the tokens that are neither a flag nor a flag's value."""
    flags: dict[str, Any] = {}
    positionals: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            if eq:
                flags[name] = value
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                flags[name] = tokens[i + 1]
                i += 1
            else:
                flags[name] = True
        else:
            positionals.append(token)
        i += 1
    return flags, positionals


def _as_file_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            pass
    return [text]


def check_command_line_keys(argv: Sequence[str] | None = None) -> None:
    """Under ``python -m monai.bundle run ...``: refuse a flag that is neither an argument of MONAI's ``run`` nor a
    top-level key (before ``#``/``::``) of the config composed of its ``--config_file`` (MONAI adds such a key and
    nothing reads it: ``--data_dir`` for ``--dataset_dir`` would train on the default data, ``--epcohs 1`` for the
    default number of epochs), suggesting the nearest keys, and a run id that is no id of the config or names a
    section of components (``run train``: MONAI would build the trainer's components and exit 0 without training;
    :func:`_check_run_id`). Overrides and the run id of an ``--args_file`` are checked too.
    A no-op in any other process (``ConfigWorkflow`` from Python, ``calibmonai`` commands, which check their flags).
    The bundles call it first in ``initialize``.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] != "run" or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return
    flags, positionals = _split_command_line(argv[2:])
    # the run id as MONAI reads it: the command line's (positional or --run_id) before an --args_file's
    run_id = flags.get("run_id", flags.get("run-id", positionals[0] if positionals else None))
    args_file = flags.get("args_file")
    if isinstance(args_file, str) and os.path.isfile(args_file):
        from monai.bundle import ConfigParser

        flags = {**ConfigParser.load_config_file(args_file), **flags}
        run_id = run_id if run_id is not None else flags.get("run_id")
    files = flags.get("config_file")
    if not files or files is True:
        return
    files = _as_file_list(files)
    if not all(os.path.isfile(f) for f in files):
        return  # MONAI names the missing file
    unknown, keys = unknown_config_keys(files, [str(k).replace("-", "_") if str(k).replace("-", "_") in _RUN_ARGUMENTS else k for k in flags], _RUN_ARGUMENTS)
    _check_run_id(files, str(run_id) if run_id not in (None, True) else "run")
    if not unknown:
        check_setting_values(bundle_parser(files).config, flags)
    if unknown:
        near = nearest_keys(unknown[0], keys)
        hint = f" Did you mean {' or '.join('--' + k for k in near)}?" if near else ""
        raise ValueError(
            f"unknown flag --{unknown[0]}: not a key of the config ({', '.join(files)}) nor an argument of "
            f"`monai.bundle run`, so nothing would read it.{hint} Config keys: {', '.join(keys)}."
        )


#: count settings of the bundles that must be at least 1 (a 0 divides by zero or trains nothing without a word)
POSITIVE_SETTINGS = ("epochs", "batch_size", "slices_per_volume", "volume_repeats", "val_interval")


def _command_line_value(value: Any) -> Any:
    """A flag's value as Fire gives it to MONAI: a Python literal where the text is one, else the text."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def check_setting_values(config: Mapping[str, Any], flags: Mapping[str, Any]) -> None:
    """Refuse a command-line value that cannot be the number a setting of the config is (``--epochs one``: MONAI
    would stop later in an expression's ``TypeError``, naming no flag), a count of :data:`POSITIVE_SETTINGS` below 1
    (``--slices_per_volume 0`` divided by zero, ``--batch_size 0`` trained silently on one volume per step), a
    ``--device cuda`` where torch sees no GPU (the run failed deep in the data pipeline and the process aborted), and a
    ``batch_size`` that is not a multiple of ``slices_per_volume`` (each step takes whole volumes' slices:
    ``batch_size // slices_per_volume`` volumes, so the remainder would be dropped without a word).

    Raises:
        ValueError: naming the flag, the value and what the setting expects.
    """
    values: dict[str, Any] = {}
    for name, raw in flags.items():
        key = str(name).replace("-", "_")
        if key in ("device", "cache_device") and isinstance(raw, str) and raw.strip().lower().startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # MONAI would fail deep in the data pipeline, then the process aborts
                raise ValueError(
                    f"--{name} {raw}: no CUDA device is visible to torch (torch.cuda.is_available() is False: a CPU build "
                    f"of torch, or no GPU). Leave --{name} out: the bundles take the GPU when there is one, else the CPU."
                )
        if key not in config or "#" in key or "::" in key:
            continue
        default, value = config[key], _command_line_value(raw)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(value, str) and value.strip()[:1] in ("$", "@", "%"):  # an expression or reference: MONAI's to evaluate
            continue
        want_int = isinstance(default, int)
        ok = isinstance(value, int) and not isinstance(value, bool) if want_int else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            kind = "an integer" if want_int else "a number"
            raise ValueError(f"--{name} expects {kind} (the config's default is {default!r}), got {raw!r}.")
        if key in POSITIVE_SETTINGS and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")
        values[key] = value
    if "batch_size" in values or "slices_per_volume" in values:
        batch, per_volume = values.get("batch_size", config.get("batch_size")), values.get("slices_per_volume", config.get("slices_per_volume"))
        if isinstance(batch, int) and isinstance(per_volume, int) and per_volume >= 1 and batch % per_volume:
            raise ValueError(
                f"--batch_size {batch} is not a multiple of --slices_per_volume {per_volume}: a step takes the slices of "
                f"whole volumes ({max(1, batch // per_volume)} volume(s) of {per_volume} slices = {max(1, batch // per_volume) * per_volume} "
                f"slices); give a multiple, e.g. --batch_size {max(1, batch // per_volume) * per_volume}."
            )


def workflow_ids(config: Mapping[str, Any]) -> list[str]:
    """The ids a config can run: top-level lists of ``$`` expressions (``training``, ``evaluate``) and ``run`` (the
    model zoo's entry point: ``run: "$@evaluator.run()"``, or ``"@training"``); the set-up and tear-down lists (``imports``,
    ``initialize``, ``finalize``) left out. A single ``$`` value elsewhere is a setting (``device``), not a workflow."""

    def runnable(k: Any, v: Any, depth: int = 0) -> bool:
        if isinstance(v, list):
            return bool(v) and all(isinstance(x, str) and x.startswith("$") for x in v)
        if k == "run":  # the model zoo's entry point: an expression or a reference to a workflow (``"@training"``)
            return True
        # an alias of a workflow (``inference: "@run"``)
        return isinstance(v, str) and v.startswith("@") and v[1:] in config and depth < 5 and runnable(v[1:], config[v[1:]], depth + 1)

    return [str(k) for k, v in config.items() if runnable(k, v) and k not in ("imports", "initialize", "finalize")]


def _check_run_id(files: Sequence[str], run_id: str) -> None:
    """Refuse a ``monai.bundle run`` id that is not in the config (a mistyped workflow: the nearest ones are named)
    or names a section of components (``train``, ``validate``: a mapping, which MONAI would only build, exiting 0
    without training). Any other id (an expression, a list of them, an alias, a nested ``a#b``) is MONAI's to run."""
    config = bundle_parser(files).config
    root = str(run_id).replace("::", "#").split("#", 1)[0]
    runnable = workflow_ids(config)
    if "#" in str(run_id).replace("::", "#") or (root in config and not isinstance(config[root], Mapping)):
        return
    what = "a section of components, not a workflow: running it would only build them and exit" if root in config else "not an id of the config"
    near = nearest_keys(root, runnable)
    hint = f" Did you mean {' or '.join(repr(k) for k in near)}?" if near else ""
    raise ValueError(f"`monai.bundle run {run_id}`: {run_id!r} is {what}.{hint} Workflows of {', '.join(files)}: {', '.join(runnable)}.")


def cause_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``), outermost first: MONAI's config parser wraps
    an error raised in an expression (``RuntimeError("Failed to evaluate ...") from e``)."""
    chain: list[BaseException] = []
    while error is not None and all(error is not c for c in chain):
        chain.append(error)
        error = error.__cause__
    return chain


def run_workflow(run_id: str, files: Sequence[str], **overrides: Any) -> Any:
    """Run a bundle workflow in this process, like ``python -m monai.bundle run <run_id> --config_file ...``:
    ``initialize`` (when the config has one), ``run_id``, then ``finalize`` (when present)."""
    parser = bundle_parser(files, **overrides)
    if "initialize" in parser:
        parser.get_parsed_content("initialize")
    try:
        return parser.get_parsed_content(run_id)
    finally:
        if "finalize" in parser:
            parser.get_parsed_content("finalize")
