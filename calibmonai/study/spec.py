"""Study files: the bundles, training methods with hyper-parameter grids, backbones, seeds/folds and epochs of a
comparison study, read from YAML and checked.

A study file (every key optional except ``bundles``)::

    name: papers
    bundles:                       # a list of names, or {name: {dataset_dir, overrides, methods, prepare, estimate}}
      mni_tissue_seg2d:
        dataset_dir: data/mni_tissue
        methods: {meep_ce_kl: {lam: [0.1, 0.3]}}     # per-dataset grids replace the study's for this bundle
    methods:                       # method: {hyper-parameter: [values]}; {} = the method's defaults
      ce: {}
      mbls: {margin: [5, 8, 10], alpha: [0.1]}
    backbones: [unet]              # bundles/backbones/<name>.yaml
    backbone_methods: [ce, mbls]   # methods run on the backbones after the first (default: every method)
    seeds: [0]
    folds: null                    # or [0, 1, 2, 3, 4]: passed to the bundle as the ``fold`` key
    epochs: 30
    overrides: {}                  # bundle config keys for every run (``network_def#channels: [4, 8, 16, 32]``)
    backbone_overrides: {}         # {backbone: {key: value}} for the runs of one backbone
    reference: ce                  # the baseline of the paired comparisons
    selection_metric: val_mean_dice
    posthoc: [ts, lts]             # calibrators fitted on validation and evaluated on test
    posthoc_on: all                # all trained models, or only the selected one per method
    noise_sigmas: [0, 0.01, 0.02, 0.03, 0.04, 0.05]
    resources: {train: {gpus: 1, cpus: 4, memory_gb: 16}, evaluate: {...}, select: {...}}
    executor: {name: local, ...}   # defaults of ``study run`` (see calibmonai.study.executors)

Without a ``methods`` key the study runs :data:`PAPER_METHODS`, the grids of the MbLS and MEEP papers.
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "PAPER_METHODS", "MEEP_LAMBDAS", "POSTHOC_DEFAULT", "NOISE_SIGMAS", "Resources", "BundleSpec", "StudySpec",
    "load_study", "check_bundle_configs", "grid_points", "swept_parameter",
]  # fmt: skip

#: MEEP's balancing term: the paper tunes lambda on each dataset's validation split; this is the grid searched when a
#: bundle gives no values of its own (the public MEEP code trains the left atrium with lambda 0.3)
MEEP_LAMBDAS: list[float] = [0.1, 0.3, 0.5, 1.0]

#: the grids of the papers (Liu et al. CVPR 2022 / Murugesan et al. MedIA 2023 for MbLS and its baselines; Larrazabal
#: et al. MICCAI 2023 for MEEP): focal gamma 1, 2, 3; ECP and LS 0.1, 0.2, 0.3; MbLS margin 5, 8, 10 with alpha 0.1,
#: L1 and L2 penalties; MEEP lambda per dataset on CE and Dice; CE, CE + Dice, SVLS and NACL at their defaults
PAPER_METHODS: dict[str, dict[str, list[Any]]] = {
    "ce": {},
    "ce_dice": {},
    "focal": {"gamma": [1.0, 2.0, 3.0]},
    "ecp": {"beta": [0.1, 0.2, 0.3]},
    "ls": {"alpha": [0.1, 0.2, 0.3]},
    "svls": {},
    "nacl": {},
    "mbls": {"margin": [5.0, 8.0, 10.0], "alpha": [0.1]},
    "mbls_l2": {"margin": [5.0, 8.0, 10.0], "alpha": [0.1]},
    "meep_ce_entropy": {"lam": MEEP_LAMBDAS},
    "meep_ce_kl": {"lam": MEEP_LAMBDAS},
    "meep_dice_entropy": {"lam": MEEP_LAMBDAS},
    "meep_dice_kl": {"lam": MEEP_LAMBDAS},
}

#: post-hoc calibrators of the MbLS paper's Table 3, fitted on every trained model
POSTHOC_DEFAULT = ["ts", "lts"]
#: standard deviations of the Gaussian noise of the robustness evaluation, relative to each image's intensity range
NOISE_SIGMAS = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]

_KINDS_WITH_RESOURCES = ("train", "evaluate", "select")
_DEFAULT_RESOURCES = {
    "train": {"gpus": 1, "cpus": 4, "memory_gb": 16.0},
    "evaluate": {"gpus": 1, "cpus": 4, "memory_gb": 16.0},
    "select": {"gpus": 0, "cpus": 1, "memory_gb": 1.0},
}


@dataclass(frozen=True)
class Resources:
    """What one task of a kind needs: GPUs (``gpus > 1`` trains through ``torchrun`` with the bundle's
    ``multi_gpu_train.yaml``), CPU cores (also the task's torch thread count) and memory in GB."""

    gpus: int = 1
    cpus: int = 4
    memory_gb: float = 16.0

    def __post_init__(self) -> None:
        if int(self.gpus) < 0 or int(self.cpus) < 1 or float(self.memory_gb) <= 0:
            raise ValueError(f"resources need gpus >= 0, cpus >= 1 and memory_gb > 0, got {self}.")


@dataclass
class BundleSpec:
    """One bundle of a study.

    Attributes:
        name: a folder of ``bundles/`` (``mni_tissue_seg2d``) or a path to a bundle folder.
        dataset_dir: the prepared data folder (``None``: the bundle's own default).
        overrides: bundle config keys for every run of this bundle.
        methods: method grids replacing the study's for this bundle (MEEP's lambda is chosen per dataset).
        prepare: ``{_target_: module.function, **kwargs}`` called as ``function(dataset_dir, **kwargs)`` by
            ``study run`` when ``dataset_dir`` is missing (the embedded task: ``calibmonai.data.prepare_mni_tissue``).
        estimate: ``{train_gpu_hours_per_epoch, eval_gpu_hours}``: assumed costs for the plan's GPU-hour estimate.
    """

    name: str
    dataset_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    prepare: dict[str, Any] | None = None
    estimate: dict[str, float] = field(default_factory=dict)


@dataclass
class StudySpec:
    """A whole study; see the module docstring for the file format. Build it with :func:`load_study`."""

    name: str
    bundles: list[BundleSpec]
    methods: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: copy.deepcopy(PAPER_METHODS))
    backbones: list[str] = field(default_factory=lambda: ["unet"])
    backbone_methods: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: list[int] | None = None
    epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    backbone_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str = "ce"
    selection_metric: str = "val_mean_dice"
    posthoc: list[str] = field(default_factory=lambda: list(POSTHOC_DEFAULT))
    posthoc_on: str = "all"
    noise_sigmas: list[float] = field(default_factory=lambda: list(NOISE_SIGMAS))
    resources: dict[str, Resources] = field(default_factory=lambda: {k: Resources(**v) for k, v in _DEFAULT_RESOURCES.items()})
    executor: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def methods_for(self, bundle: BundleSpec, backbone: str | None = None) -> dict[str, dict[str, list[Any]]]:
        """The method grids of one bundle: the study's, with the bundle's own grids replacing them; on a backbone
        after the first, only ``backbone_methods`` (when set)."""
        grids = copy.deepcopy(self.methods)
        for method, grid in bundle.methods.items():
            if method in grids:
                grids[method] = copy.deepcopy(grid)
        if backbone is not None and self.backbone_methods is not None and self.backbones and backbone != self.backbones[0]:
            grids = {m: g for m, g in grids.items() if m in self.backbone_methods}
        return grids

    def replicates(self) -> list[tuple[int, int | None]]:
        """``(seed, fold)`` pairs, fold ``None`` when the study has no folds."""
        return [(s, f) for s in self.seeds for f in (self.folds if self.folds else [None])]

    def to_dict(self) -> dict[str, Any]:
        """The study as plain data (what ``study.yaml`` of a study folder holds)."""
        d = asdict(self)
        d["resources"] = {k: asdict(v) for k, v in self.resources.items()}
        d["bundles"] = {b.name: {k: v for k, v in asdict(b).items() if k != "name"} for b in self.bundles}
        d.pop("source", None)
        return d


def _as_number(value: Any, method: str, key: str) -> Any:
    """Hyper-parameter values keep their type, except integers given for a float default (``margin: 5`` is 5.0,
    so the run is named ``mbls_..._margin5.0`` however the file spells it)."""
    from calibmonai.losses import METHODS

    default = METHODS[method].defaults.get(key)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_methods(grids: Mapping[str, Any], where: str) -> dict[str, dict[str, list[Any]]]:
    from calibmonai.losses import METHODS

    if not isinstance(grids, Mapping):
        raise ValueError(f"{where}: 'methods' must map method names to hyper-parameter grids, got {grids!r}.")
    out: dict[str, dict[str, list[Any]]] = {}
    for method, grid in grids.items():
        if method not in METHODS:
            raise ValueError(f"{where}: unknown method {method!r}; available methods: {', '.join(METHODS)}.")
        grid = {} if grid is None else grid
        if not isinstance(grid, Mapping):
            raise ValueError(f"{where}: the grid of {method!r} must map hyper-parameters to lists of values, got {grid!r}.")
        checked: dict[str, list[Any]] = {}
        for key, values in grid.items():
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values:
                raise ValueError(f"{where}: {method}.{key} has an empty list of values.")
            checked[str(key)] = [_as_number(v, method, str(key)) for v in values]
        out[str(method)] = checked
    return out


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of a hyper-parameter grid, in file order: ``{margin: [5, 10], alpha: [0.1]}`` gives
    ``[{margin: 5, alpha: 0.1}, {margin: 10, alpha: 0.1}]``; ``{}`` gives ``[{}]`` (the method's defaults)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def swept_parameter(method: str, grid: Mapping[str, Sequence[Any]]) -> str | None:
    """The balancing term of a method's grid: the hyper-parameter with more than one value (the first such), else
    the first one listed, else the method's first default (``None`` for CE)."""
    from calibmonai.losses import METHODS

    for key, values in grid.items():
        if len(values) > 1:
            return key
    if grid:
        return next(iter(grid))
    defaults = [k for k, v in METHODS[method].defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return defaults[-1] if defaults else None


def _resolve_path(path: str | None, base: Path) -> str | None:
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (base / p).resolve())


def _bundles(raw: Any, where: str, base: Path) -> list[BundleSpec]:
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, (list, tuple)):
        raw = {str(name): {} for name in raw}
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: 'bundles' must name at least one bundle (a list of names or a mapping), got {raw!r}.")
    out = []
    allowed = {"dataset_dir", "overrides", "methods", "prepare", "estimate"}
    for name, conf in raw.items():
        conf = _mapping(conf, f"bundles.{name}", where, "{dataset_dir: data/x, overrides: {...}}")
        unknown = set(conf) - allowed
        if unknown:
            raise ValueError(f"{where}: bundle {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
        estimate = _mapping(conf.get("estimate"), f"bundles.{name}.estimate", where, "{train_gpu_hours_per_epoch: 0.01, eval_gpu_hours: 0.1}")
        for k, v in estimate.items():
            if not _is_number(v) or v < 0:
                raise ValueError(f"{where}: bundles.{name}.estimate.{k} must be a number >= 0, got {v!r}.")
        if conf.get("dataset_dir") is not None and not isinstance(conf["dataset_dir"], str):
            raise ValueError(f"{where}: bundles.{name}.dataset_dir must be a folder path, got {conf['dataset_dir']!r}.")
        out.append(
            BundleSpec(
                name=str(name), dataset_dir=_resolve_path(conf.get("dataset_dir"), base),
                overrides=_mapping(conf.get("overrides"), f"bundles.{name}.overrides", where, "{batch_size: 4}"),
                methods=_check_methods(conf.get("methods") or {}, f"{where}, bundle {name}"),
                prepare=_mapping(conf["prepare"], f"bundles.{name}.prepare", where, "{_target_: module.function}") if conf.get("prepare") is not None else None,
                estimate={k: float(v) for k, v in estimate.items()},
            )
        )  # fmt: skip
    return out


def _resources(raw: Any, where: str) -> dict[str, Resources]:
    out = {k: Resources(**v) for k, v in _DEFAULT_RESOURCES.items()}
    for kind, conf in _mapping(raw, "resources", where, "{train: {gpus: 1, cpus: 4, memory_gb: 16}}").items():
        if kind not in _KINDS_WITH_RESOURCES:
            raise ValueError(f"{where}: resources for unknown task kind {kind!r}; kinds: {', '.join(_KINDS_WITH_RESOURCES)}.")
        conf = _mapping(conf, f"resources.{kind}", where, "{gpus: 1, cpus: 4, memory_gb: 16}")
        fields = list(asdict(out[kind]))
        for key, value in conf.items():
            if key not in fields:
                raise ValueError(f"{where}: resources.{kind} has the unknown key {key!r}{_did_you_mean(str(key), fields)}; its keys: {', '.join(fields)}.")
            whole = key != "memory_gb"
            if not _is_number(value, whole) or value < (0 if key == "gpus" else 1 if key == "cpus" else 1e-12):
                need = {"gpus": "a whole number >= 0", "cpus": "a whole number >= 1", "memory_gb": "a number > 0"}[key]
                raise ValueError(f"{where}: resources.{kind}.{key} must be {need}, got {value!r}.")
        out[kind] = Resources(**{**asdict(out[kind]), **dict(conf)})
    return out


# ---------------------------------------------------------------- value checks naming the file and the key
def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _is_number(value: Any, whole: bool = False) -> bool:
    """A YAML number (not a boolean); with ``whole``, an integer (``1.5``, ``'ten'`` and ``true`` are not)."""
    if isinstance(value, bool):
        return False
    if whole:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mapping(value: Any, key: str, where: str, example: str) -> dict[Any, Any]:
    """``value`` of the study key ``key`` as a dict (``None``: empty), else ``ValueError`` naming the key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: '{key}' must be a mapping such as {example}, got {value!r}.")
    return dict(value)


def _int_list(value: Any, key: str, where: str, minimum: int = 0) -> list[int]:
    """A list of whole numbers ``>= minimum`` (a single number is not a list: ``seeds: 3`` would read as three seeds
    or one, so it is refused with the list to write)."""
    if not isinstance(value, (list, tuple)):
        example = f"[{value}]" if _is_number(value, whole=True) and value >= minimum else f"[{minimum}]"
        raise ValueError(f"{where}: '{key}' must be a list of whole numbers >= {minimum}, such as {key}: {example}; got {value!r}.")
    bad = [v for v in value if not _is_number(v, whole=True) or v < minimum]
    if bad:
        raise ValueError(f"{where}: '{key}' must be a list of whole numbers >= {minimum}, got {bad[0]!r} in {list(value)}.")
    return [int(v) for v in value]


def _str_list(value: Any, key: str, where: str) -> list[str]:
    """A list of names (a single name is taken as a list of one)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of names, got {value!r}.")
    return list(value)


_TOP_KEYS = {
    "name", "bundles", "methods", "backbones", "backbone_methods", "seeds", "folds", "epochs", "overrides", "backbone_overrides", "reference",
    "selection_metric", "posthoc", "posthoc_on", "noise_sigmas", "resources", "executor",
}  # fmt: skip


def _read_yaml(path: Path) -> Any:
    """The YAML of a study file; a syntax error raises a one-line ``ValueError`` with the line and column."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML: {at}{problem}.") from None


def load_study(study: str | os.PathLike | Mapping[str, Any], base_dir: str | os.PathLike | None = None, check_bundles: bool = True) -> StudySpec:
    """Read and check a study: a YAML file, a study folder (its ``study.yaml``) or a mapping.

    Relative ``dataset_dir`` paths are taken from ``base_dir`` (default: the current directory). Unknown keys,
    methods, calibrators, values of the wrong type and impossible values raise ``ValueError`` naming the file and
    the key; a missing file raises ``FileNotFoundError``. With ``check_bundles`` (default), the overrides and every
    grid point of every method are also checked against each installed bundle (:func:`check_bundle_configs`).
    """
    from calibmonai.calibration import CALIBRATORS

    source = None
    if isinstance(study, Mapping):
        raw, where = dict(study), "study"
    else:
        path = Path(study)
        if path.is_dir():
            if not (path / "study.yaml").is_file():
                raise FileNotFoundError(f"{path} is a folder without study.yaml: no study has been planned or run there (`calibmonai study plan STUDY.yaml --out {path}` first).")
            path = path / "study.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"study file {path} does not exist")
        raw = _read_yaml(path)
        where, source = str(path), str(path.resolve())
        if raw is None:
            raise ValueError(f"{where}: the study file is empty; it needs at least 'bundles' (see studies/tiny.yaml).")
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a study file must be a YAML mapping, got {type(raw).__name__}.")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}.")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if raw.get("name") is not None and not isinstance(raw["name"], (str, int)):
        raise ValueError(f"{where}: 'name' must be a name, got {raw['name']!r}.")
    name = str(raw.get("name") or (Path(source).stem if source else "study"))
    spec = StudySpec(name=name, bundles=_bundles(raw.get("bundles"), where, base), source=source)
    if "methods" in raw:
        if not raw["methods"]:
            raise ValueError(f"{where}: 'methods' is empty; list at least one method (methods: {{ce: {{}}}}), or remove the key to run the papers' full grid.")
        spec.methods = _check_methods(raw["methods"], where)
    spec.backbones = _str_list(raw.get("backbones") or ["unet"], "backbones", where)
    if raw.get("backbone_methods") is not None:
        spec.backbone_methods = _str_list(raw["backbone_methods"], "backbone_methods", where)
        unknown_m = [m for m in spec.backbone_methods if m not in spec.methods]
        if unknown_m:
            raise ValueError(f"{where}: backbone_methods {unknown_m} are not methods of the study ({', '.join(spec.methods)}).")
    spec.seeds = _int_list(raw.get("seeds") if raw.get("seeds") is not None else [0], "seeds", where)
    if not spec.seeds:
        raise ValueError(f"{where}: 'seeds' is empty; list at least one seed (seeds: [0]).")
    spec.folds = _int_list(raw["folds"], "folds", where) if raw.get("folds") else None
    if raw.get("epochs") is not None:
        if not _is_number(raw["epochs"], whole=True) or raw["epochs"] < 1:
            raise ValueError(f"{where}: 'epochs' must be a whole number >= 1, got {raw['epochs']!r}.")
        spec.epochs = int(raw["epochs"])
    spec.overrides = _mapping(raw.get("overrides"), "overrides", where, "{batch_size: 4}")
    spec.backbone_overrides = {
        str(k): _mapping(v, f"backbone_overrides.{k}", where, "{batch_size: 4}")
        for k, v in _mapping(raw.get("backbone_overrides"), "backbone_overrides", where, "{attention_unet: {batch_size: 4}}").items()
    }  # fmt: skip
    for key in ("reference", "selection_metric", "posthoc_on"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{where}: '{key}' must be a name, got {raw[key]!r}.")
    spec.reference = str(raw.get("reference", "ce"))
    spec.selection_metric = str(raw.get("selection_metric", "val_mean_dice"))
    posthoc = raw.get("posthoc", POSTHOC_DEFAULT)
    spec.posthoc = _str_list(posthoc, "posthoc", where) if posthoc else []
    for c in spec.posthoc:
        if c not in CALIBRATORS:
            raise ValueError(f"{where}: unknown calibrator {c!r} in 'posthoc'; available calibrators: {', '.join(CALIBRATORS)}.")
    spec.posthoc_on = str(raw.get("posthoc_on", "all"))
    if spec.posthoc_on not in ("all", "selected"):
        raise ValueError(f"{where}: posthoc_on must be 'all' or 'selected', got {spec.posthoc_on!r}.")
    sigmas = raw.get("noise_sigmas", NOISE_SIGMAS)
    if sigmas is not None and (not isinstance(sigmas, (list, tuple)) or not all(_is_number(s) for s in sigmas)):
        raise ValueError(f"{where}: noise_sigmas must be a list of numbers (noise_sigmas: [0, 0.05]), got {sigmas!r}.")
    spec.noise_sigmas = sorted({float(s) for s in (sigmas or [])})
    if any(not math.isfinite(s) or s < 0 for s in spec.noise_sigmas):
        raise ValueError(f"{where}: noise_sigmas must be finite and >= 0, got {sigmas}.")
    spec.resources = _resources(raw.get("resources"), where)
    spec.executor = _mapping(raw.get("executor"), "executor", where, "{name: local, workers: 2}")
    from calibmonai.bundle_tools import backbone_names

    available = backbone_names()
    for b in spec.backbones:
        if available and b not in available:
            raise ValueError(f"{where}: unknown backbone {b!r}; available backbones: {', '.join(available)}.")
    for b in spec.backbone_overrides:
        if b not in spec.backbones:
            raise ValueError(f"{where}: backbone_overrides names {b!r}, not a backbone of the study ({', '.join(spec.backbones)}), so no run would read it.")
    if check_bundles:
        check_bundle_configs(spec, where)
    return spec


# ---------------------------------------------------------------- the study against each bundle's config
@functools.lru_cache(maxsize=None)
def _method_fragment(method: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """``(registry loss, fragment loss_kwargs)`` of ``bundles/methods/<method>.yaml`` (the method itself and no
    arguments when the fragment does not exist)."""
    import yaml

    from calibmonai.bundle_tools import fragment

    try:
        conf = yaml.safe_load(fragment("methods", method).read_text()) or {}
    except ValueError:
        return method, ()
    return str(conf.get("method", method)), tuple((conf.get("loss_kwargs") or {}).items())


def _backbone_fragment(backbone: str) -> str | None:
    """The backbone fragment a run of ``backbone`` composes (``None``: the bundle's own network)."""
    from calibmonai.bundle_tools import backbone_names

    return None if backbone == "unet" and "unet" not in backbone_names() else backbone


def _multi_gpu_bundles() -> list[str]:
    """The repository's bundles that ship a ``configs/multi_gpu_train.yaml``."""
    from calibmonai.bundle_tools import REPO_BUNDLES

    return sorted(p.parent.parent.name for p in Path(REPO_BUNDLES).glob("*/configs/multi_gpu_train.yaml"))


def _check_overrides(files: list[str], overrides: Mapping[str, Any], section: str, bundle: str, where: str) -> None:
    """Refuse an override key of the study whose top-level key is not in the composed config of ``bundle``."""
    from calibmonai.bundle_tools import unknown_config_keys

    unknown, keys = unknown_config_keys(files, overrides)
    if unknown:
        bad = unknown[0]
        root = bad.replace("::", "#").split("#", 1)[0]
        raise ValueError(
            f"{where}: {section} sets {bad!r}, but {root!r} is not a key of bundle {bundle}'s config, so every run would "
            f"ignore it{_did_you_mean(root, keys)}; fix or remove the key. Config keys: {', '.join(keys)}."
        )


def _check_grid_point(method: str, point: Mapping[str, Any], num_classes: int, spatial_dims: int, section: str, bundle: str, where: str) -> None:
    """Build the loss of one grid point as a run would (the method fragment's ``loss_kwargs`` completed by the
    point); a parameter the loss does not take or a value it refuses raises ``ValueError`` naming the valid ones."""
    from calibmonai.losses import loss_parameters
    from calibmonai.losses import METHODS, get_loss

    loss, base = _method_fragment(method)
    if loss not in METHODS:
        return  # the fragment names no registry loss: the bundle's own config builds it
    names, open_ended = loss_parameters(loss)
    listed = ", ".join(names) if names else "none by name"
    if open_ended:
        listed += " (and the keyword arguments of the MONAI loss it wraps)"
    unknown = [k for k in point if k not in names]
    if unknown and not open_ended:
        raise ValueError(f"{where}: {section}: {unknown[0]!r} is not a parameter of method {method!r}{_did_you_mean(unknown[0], names)}; its parameters: {listed}.")
    for key, value in point.items():
        default = METHODS[loss].defaults.get(key)
        if _is_number(default) and not _is_number(value):
            raise ValueError(f"{where}: {section}: {method}.{key} must be a number (default {default}), got {value!r}. Its parameters: {listed}.")
    kwargs = {**dict(base), **point}
    try:
        get_loss(loss, num_classes=num_classes, spatial_dims=spatial_dims, **kwargs)
    except (TypeError, ValueError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "its defaults"
        raise ValueError(
            f"{where}: {section}: method {method!r} (bundle {bundle}) refuses {shown}: {str(e).rstrip('.')}. Its parameters: {listed}."
        ) from None


def check_bundle_configs(spec: StudySpec, where: str | None = None) -> None:
    """Check a study against the config of every installed bundle, before anything is planned or trained.

    - every key of ``overrides``, the bundle's ``overrides`` and ``backbone_overrides`` must be (before ``#``/``::``)
      a top-level key of the bundle's ``configs/train.yaml`` composed with a method fragment and the backbone's
      fragment, as each run composes them (a mistyped key such as ``batch_sise`` would be set and never read);
    - every grid point of every method must build the method's loss (``calibmonai.losses.get_loss``) with the
      bundle's ``num_classes`` and ``spatial_dims``: an unknown parameter or a refused value names the valid ones.

    Bundles that are not installed are skipped for the first check (``study plan`` shows them blocked); their grid
    points are built for 2 classes in 2D.

    Raises:
        ValueError: ``<file>: overrides sets 'batch_sise', but 'batch_sise' is not a key of bundle ...``.
    """
    from calibmonai.bundle_tools import bundle_dir, bundle_parser, config_files

    where = where or spec.source or "study"
    first_method = next(iter(spec.methods))
    checked: set[tuple[Any, ...]] = set()
    for bundle in spec.bundles:
        try:
            bundle_dir(bundle.name)
            installed = True
        except FileNotFoundError:
            installed = False
        num_classes, spatial_dims = 2, 2
        gpus = int(spec.resources["train"].gpus) if "train" in spec.resources else 1
        if installed and gpus > 1 and not (bundle_dir(bundle.name) / "configs" / "multi_gpu_train.yaml").is_file():
            raise ValueError(
                f"{where}: resources.train.gpus is {gpus}, which trains through torchrun with the bundle's "
                f"configs/multi_gpu_train.yaml, but bundle {bundle.name} has none (bundles with one: "
                f"{', '.join(_multi_gpu_bundles()) or 'none'}). Set resources.train.gpus: 1 for the study, or put {bundle.name} in a study of its own."
            )
        if installed:
            for backbone in spec.backbones:
                files = config_files(bundle.name, first_method, backbone=_backbone_fragment(backbone))
                _check_overrides(files, spec.overrides, "overrides", bundle.name, where)
                _check_overrides(files, bundle.overrides, f"bundles.{bundle.name}.overrides", bundle.name, where)
                _check_overrides(files, spec.backbone_overrides.get(backbone, {}), f"backbone_overrides.{backbone}", bundle.name, where)
            parser = bundle_parser(config_files(bundle.name, first_method))
            for key, value in {**spec.overrides, **bundle.overrides}.items():
                if str(key).replace("::", "#").split("#", 1)[0] in ("num_classes", "spatial_dims"):
                    try:
                        parser[key] = value
                    except Exception:  # noqa: BLE001 - a nested key that does not resolve: the default geometry
                        pass
            try:
                num_classes, spatial_dims = int(parser.get_parsed_content("num_classes")), int(parser.get_parsed_content("spatial_dims"))
            except Exception:  # noqa: BLE001 - a bundle computing them from its data: the grid is checked in 2D
                pass
        for method, grid in spec.methods_for(bundle).items():
            section = f"bundles.{bundle.name}.methods.{method}" if method in bundle.methods else f"methods.{method}"
            for point in grid_points(grid):
                key = (method, num_classes, spatial_dims, repr(sorted(point.items(), key=lambda kv: kv[0])))
                if key in checked:
                    continue
                checked.add(key)
                _check_grid_point(method, point, num_classes, spatial_dims, section, bundle.name, where)
