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
import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "PAPER_METHODS", "MEEP_LAMBDAS", "POSTHOC_DEFAULT", "NOISE_SIGMAS", "Resources", "BundleSpec", "StudySpec",
    "load_study", "grid_points", "swept_parameter",
]  # fmt: skip

#: MEEP's balancing term: the paper tunes lambda on each dataset's validation split; this is the grid searched when a
#: bundle gives no values of its own (the public MEEP code trains the left atrium with lambda 0.3)
MEEP_LAMBDAS: list[float] = [0.1, 0.3, 0.5, 1.0]

#: the grids of the papers (Liu et al. CVPR 2022 / Murugesan et al. MedIA 2023 for MbLS and its baselines; Larrazabal
#: et al. MICCAI 2021 for MEEP): focal gamma 1, 2, 3; ECP and LS 0.1, 0.2, 0.3; MbLS margin 5, 8, 10 with alpha 0.1,
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
        conf = dict(conf or {})
        unknown = set(conf) - allowed
        if unknown:
            raise ValueError(f"{where}: bundle {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
        out.append(
            BundleSpec(
                name=str(name), dataset_dir=_resolve_path(conf.get("dataset_dir"), base), overrides=dict(conf.get("overrides") or {}),
                methods=_check_methods(conf.get("methods") or {}, f"{where}, bundle {name}"), prepare=conf.get("prepare"),
                estimate={k: float(v) for k, v in (conf.get("estimate") or {}).items()},
            )
        )  # fmt: skip
    return out


def _resources(raw: Any, where: str) -> dict[str, Resources]:
    out = {k: Resources(**v) for k, v in _DEFAULT_RESOURCES.items()}
    for kind, conf in (raw or {}).items():
        if kind not in _KINDS_WITH_RESOURCES:
            raise ValueError(f"{where}: resources for unknown task kind {kind!r}; kinds: {', '.join(_KINDS_WITH_RESOURCES)}.")
        out[kind] = Resources(**{**asdict(out[kind]), **dict(conf)})
    return out


_TOP_KEYS = {
    "name", "bundles", "methods", "backbones", "backbone_methods", "seeds", "folds", "epochs", "overrides", "backbone_overrides", "reference",
    "selection_metric", "posthoc", "posthoc_on", "noise_sigmas", "resources", "executor",
}  # fmt: skip


def load_study(study: str | os.PathLike | Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> StudySpec:
    """Read and check a study: a YAML file, a study folder (its ``study.yaml``) or a mapping.

    Relative ``dataset_dir`` paths are taken from ``base_dir`` (default: the current directory). Unknown keys,
    methods, calibrators and impossible values raise ``ValueError`` naming the file and the key; a missing file
    raises ``FileNotFoundError``.
    """
    import yaml

    from calibmonai.calibration import CALIBRATORS

    source = None
    if isinstance(study, Mapping):
        raw, where = dict(study), "study"
    else:
        path = Path(study)
        if path.is_dir():
            path = path / "study.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"study file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        where, source = str(path), str(path.resolve())
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a study file must be a YAML mapping, got {type(raw).__name__}.")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}.")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    name = str(raw.get("name") or (Path(source).stem if source else "study"))
    spec = StudySpec(name=name, bundles=_bundles(raw.get("bundles"), where, base), source=source)
    if raw.get("methods") is not None:
        spec.methods = _check_methods(raw["methods"], where)
    if not spec.methods:
        raise ValueError(f"{where}: 'methods' is empty; list at least one method or leave the key out for the papers' grid.")
    spec.backbones = [str(b) for b in (raw.get("backbones") or ["unet"])]
    if raw.get("backbone_methods") is not None:
        spec.backbone_methods = [str(m) for m in raw["backbone_methods"]]
        unknown_m = [m for m in spec.backbone_methods if m not in spec.methods]
        if unknown_m:
            raise ValueError(f"{where}: backbone_methods {unknown_m} are not methods of the study ({', '.join(spec.methods)}).")
    spec.seeds = [int(s) for s in (raw.get("seeds") if raw.get("seeds") is not None else [0])]
    if not spec.seeds:
        raise ValueError(f"{where}: 'seeds' is empty.")
    spec.folds = [int(f) for f in raw["folds"]] if raw.get("folds") else None
    if raw.get("epochs") is not None:
        spec.epochs = int(raw["epochs"])
        if spec.epochs < 1:
            raise ValueError(f"{where}: epochs must be >= 1, got {spec.epochs}.")
    spec.overrides = dict(raw.get("overrides") or {})
    spec.backbone_overrides = {str(k): dict(v or {}) for k, v in (raw.get("backbone_overrides") or {}).items()}
    spec.reference = str(raw.get("reference", "ce"))
    spec.selection_metric = str(raw.get("selection_metric", "val_mean_dice"))
    posthoc = raw.get("posthoc", POSTHOC_DEFAULT)
    spec.posthoc = [str(c) for c in (posthoc or [])]
    for c in spec.posthoc:
        if c not in CALIBRATORS:
            raise ValueError(f"{where}: unknown calibrator {c!r} in 'posthoc'; available calibrators: {', '.join(CALIBRATORS)}.")
    spec.posthoc_on = str(raw.get("posthoc_on", "all"))
    if spec.posthoc_on not in ("all", "selected"):
        raise ValueError(f"{where}: posthoc_on must be 'all' or 'selected', got {spec.posthoc_on!r}.")
    sigmas = raw.get("noise_sigmas", NOISE_SIGMAS)
    spec.noise_sigmas = sorted({float(s) for s in (sigmas or [])})
    if any(not math.isfinite(s) or s < 0 for s in spec.noise_sigmas):
        raise ValueError(f"{where}: noise_sigmas must be finite and >= 0, got {sigmas}.")
    spec.resources = _resources(raw.get("resources"), where)
    spec.executor = dict(raw.get("executor") or {})
    from calibmonai.bundle_tools import backbone_names

    available = backbone_names()
    for b in spec.backbones:
        if available and b not in available:
            raise ValueError(f"{where}: unknown backbone {b!r}; available backbones: {', '.join(available)}.")
    return spec
