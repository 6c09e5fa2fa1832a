"""Shared pieces of the 2D dataset bundles (``bundles/<dataset>_seg2d``): the checked datalist of a bundle's split,
the split file, the deterministic load + normalise + resample transforms of each dataset (cached on disk by MONAI's
``PersistentDataset``), the random slice sampling that follows them, and the inference inputs.

Every bundle's YAML calls the same few functions with its ``dataset_name`` (the registry name of
:mod:`calibmonai.datasets`), so the dataset-specific logic lives here and in the reader modules, not in the configs.

Preprocessing of the MbLS benchmarks (Murugesan et al., "Calibrating segmentation networks with margin-based label
smoothing", Medical Image Analysis 2023), as done here (:data:`PROTOCOLS` holds the defaults):

=================  =========================================================================================
``acdc``           ED and ES frames as stored (slices along the third voxel axis); each slice resized to
                   ``image_size`` (224 x 224; labels nearest); intensities min-max scaled to [0, 1] per volume.
``mrbrains18``     reg_T1, reg_IR, FLAIR as channels; RAS; labels 0-10 mapped to background/CSF/GM/WM; each
                   channel min-max scaled to [0, 1]; slices zero-padded to at least ``image_size`` (240 x 240).
``brats19``        FLAIR, T1, T1ce, T2 as channels (BraTS or MSD Task01 layout); RAS; labels mapped to
                   0 / NCR-NET / edema / enhancing; each channel min-max scaled to [0, 1]; padded to
                   ``image_size`` (240 x 240); training slices centred on tumour only (background-only slices
                   dropped); evaluation on the ET / TC / WT regions.
``busi``           2D PNG images read as grey level, masks united and binarised; resized to ``image_size``
                   (256 x 256); intensities min-max scaled to [0, 1].
``flare21``        RAS; resampled to a common spacing (``spacing``, default 2 x 2 x 5 mm); CT window
                   (``window``, default [-125, 275] HU) clipped and scaled to [0, 1]; slices centre-cropped or
                   padded to ``image_size`` (192 x 192); with a label, ``num_slices`` (30) slices centred on the
                   labelled organs.
``promise12``      T2 (the first channel of the MSD Task05 volumes); PZ and TZ merged into the gland; in-plane
                   resampling of the anisotropic volumes to ``spacing`` (0.625 mm, slice thickness kept);
                   min-max scaled to [0, 1]; slices centre-cropped or padded to ``image_size`` (192 x 192).
``msd_hippocampus``  volumes as stored; min-max scaled to [0, 1]; slices padded to ``image_size`` (64 x 64).
=================  =========================================================================================

The values that the paper's text does not fix (the FLARE window and spacing, the prostate spacing and field of
view) are calibmonai's choices, overridable from a bundle's ``preprocess`` key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from calibmonai.datasets import common, get_dataset
from calibmonai.datasets.common import CheckReport, format_report
from calibmonai.run_files import atomic_file

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "DatasetCheckError",
    "protocol",
    "bundle_datalist",
    "check_cases",
    "bundle_file",
    "load_bundle_split",
    "write_bundle_split",
    "load_transforms",
    "slice_sampling",
    "item_hash",
    "settings_hash",
    "scan_datalist",
    "LabelCentredSlicesd",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger("calibmonai.datasets")

#: version of the preprocessing below; part of the cache key, so that a change here invalidates cached volumes
PIPELINE_VERSION = 1
#: 2D image files read by the 2D-image bundles' inference (BUSI)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Protocol:
    """The preprocessing of one dataset (see the module docstring).

    Attributes:
        dataset: registry name.
        image_size: default in-plane size ``(H, W)`` of the network input.
        volumes: ``True`` for 3D volumes sliced into 2D training samples, ``False`` for 2D images.
        orientation: axis codes the volumes are reoriented to, or ``None`` to slice them as stored.
        in_plane: ``"resize"`` (interpolate to ``image_size``), ``"pad"`` (zero-pad to at least ``image_size``) or
            ``"pad_or_crop"`` (centre crop or pad to exactly ``image_size``).
        pos, neg: ratio of training slices centred on a foreground / background voxel (``neg=0``: slices without
            any foreground are never drawn).
        options: dataset-specific defaults (``spacing``, ``window``, ``num_slices``), overridable by keyword.
    """

    dataset: str
    image_size: tuple[int, int]
    volumes: bool = True
    orientation: str | None = None
    in_plane: str = "pad"
    pos: float = 1.0
    neg: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)


PROTOCOLS: dict[str, Protocol] = {
    "acdc": Protocol("acdc", (224, 224), in_plane="resize"),
    "mrbrains18": Protocol("mrbrains18", (240, 240), orientation="RAS"),
    "brats19": Protocol("brats19", (240, 240), orientation="RAS", neg=0.0),
    "busi": Protocol("busi", (256, 256), volumes=False, in_plane="resize"),
    "flare21": Protocol(
        "flare21",
        (192, 192),
        orientation="RAS",
        in_plane="pad_or_crop",
        options={"spacing": (2.0, 2.0, 5.0), "window": (-125.0, 275.0), "num_slices": 30},
    ),
    "promise12": Protocol("promise12", (192, 192), in_plane="pad_or_crop", options={"spacing": (0.625, 0.625, 0.0)}),
    "msd_hippocampus": Protocol("msd_hippocampus", (64, 64)),
}


def protocol(dataset: str) -> Protocol:
    """The :class:`Protocol` of a registered dataset (``ValueError`` naming the known ones otherwise)."""
    name = get_dataset(dataset).NAME
    if name not in PROTOCOLS:
        raise ValueError(f"no 2D-bundle preprocessing for dataset {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


class DatasetCheckError(ValueError):
    """A dataset folder whose cases in the split cannot be used; the message is the check report, naming each file."""


# ----------------------------------------------------------------------------------------------- stamps


def _paths_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _stamp(path: str) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file, or ``[path, None, None]`` when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, int(st.st_size), int(st.st_mtime_ns)]


def _case_stamp(case: common.Case) -> list[list[Any]]:
    return [_stamp(p) for p in case.paths()]


def item_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of a datalist item for ``PersistentDataset(hash_func=...)``: the item's fields plus the size and
    modification time of its files, so that a replaced file is read again rather than served from the cache."""
    stamps = [_stamp(p) for key in ("image", "label", "masks") for p in _paths_of(item.get(key)) if os.path.isfile(p)]
    text = json.dumps({"item": dict(item), "files": stamps}, sort_keys=True, default=str)
    return hashlib.md5(text.encode("utf-8")).hexdigest().encode("utf-8")


def settings_hash(dataset: str, image_size: Sequence[int], **preprocess: Any) -> Callable[..., bytes]:
    """``PersistentDataset(hash_transform=...)``: a key of the preprocessing settings (dataset, image size,
    ``preprocess`` options, :data:`PIPELINE_VERSION`), so that volumes cached with other settings are not reused.

    (MONAI's own transform hashing pickles or JSON-encodes the transform objects, which fails on readers holding
    lambdas and falls back to class names that ignore the parameters.)
    """
    settings = {"dataset": str(dataset), "image_size": [int(s) for s in image_size], "version": PIPELINE_VERSION}
    settings["preprocess"] = {k: preprocess[k] for k in sorted(preprocess)}
    digest = hashlib.md5(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]

    def _hash(_transforms: Any = None) -> bytes:
        return f"_{digest}".encode("utf-8")

    return _hash


# ------------------------------------------------------------------------------------------------ splits


def bundle_file(bundle_root: str | Path, bundle: str, relative: str) -> str:
    """A file of a bundle, wherever the workflow runs from: ``<bundle_root>/<relative>`` when it exists (run from the
    bundle's folder, or an exported bundle), else the repository's ``bundles/<bundle>/<relative>`` when that exists
    (run from the repository root, ``bundle_root`` ``.``). A file that exists in neither place (a split still to
    write) goes in the folder that holds the bundle's configs: ``<bundle_root>`` when it has the file's folder, else
    the repository's bundle."""
    from calibmonai.bundle_tools import REPO_BUNDLES

    local = Path(bundle_root) / relative
    repo = REPO_BUNDLES / bundle / relative
    if local.is_file() or (not repo.is_file() and local.parent.is_dir()):
        return str(local)
    if repo.is_file() or repo.parent.is_dir():
        return str(repo)
    return str(local)


def _takes_fold(module: Any) -> bool:
    return "fold" in inspect.signature(module.make_split).parameters


def load_bundle_split(path: str | Path, fold: int | None = None) -> dict[str, list[str]]:
    """A bundle's split file: ``{"training", "validation", "test"}`` (:func:`calibmonai.datasets.write_split`), or a
    file of leave-one-out folds ``{"folds": [{...}, ...]}`` from which ``fold`` is taken.

    Raises:
        FileNotFoundError: naming the file when it is missing.
        ValueError: naming the file for a fold file without ``fold``, or a fold out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    doc = json.loads(path.read_text())
    if "folds" in doc:
        folds = doc["folds"]
        if fold is None:
            raise ValueError(f"{path} holds {len(folds)} folds: give the fold (--fold k)")
        if not 0 <= int(fold) < len(folds):
            raise ValueError(f"fold must be in [0, {len(folds) - 1}] for {path}, got {fold}")
        return common.load_split(folds[int(fold)])
    return common.load_split(doc)


def write_bundle_split(
    dataset: str,
    path: str | Path,
    seed: int = 0,
    dataset_dir: str | Path | None = None,
    from_data: bool | None = None,
) -> Path:
    """Write the seeded split of ``dataset`` to ``path`` (the bundles' ``write_split`` workflow).

    The subjects are the dataset's known ids (``KNOWN_IDS``: ACDC, MRBrainS18, BUSI, PROMISE12, the left atrium) unless
    ``from_data`` is true or the ids are not known in advance (BraTS, FLARE21, the decathlon tasks): then those found in
    ``dataset_dir``. A leave-one-out dataset (MRBrainS18) gets every fold in one file. The same ids and seed give the
    same file, byte for byte.
    """
    module = get_dataset(dataset)
    known = getattr(module, "KNOWN_IDS", None)
    use_data = bool(from_data) or not known
    if use_data:
        if dataset_dir is None:
            raise ValueError(
                f"the subject ids of {module.NAME} are not known in advance: give the data folder (--dataset_dir)"
            )
        _require_folder(dataset_dir, module.NAME)
        ids = sorted({c.subject for c in module.find_cases(dataset_dir, strict=False)}, key=common.natural_key)
    else:
        ids = sorted(known, key=common.natural_key)
    # the file depends only on the ids and the seed: known ids and a complete download give the same bytes
    meta = {"dataset": module.NAME, "seed": int(seed), "unit": "subject", "n_subjects": len(ids)}
    if not _takes_fold(module):
        return common.save_split(module.make_split(ids, seed=int(seed)), path, **meta)
    folds = [module.make_split(ids, seed=int(seed), fold=k) for k in range(len(ids))]
    doc = dict(meta, scheme="leave-one-subject-out", folds=[{k: list(f[k]) for k in common.SPLIT_KEYS} for f in folds])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=4) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- datalist


def _require_folder(dataset_dir: str | Path, name: str) -> Path:
    root = Path(dataset_dir)
    hint = f"download {name} (see the bundle's docs/README.md) and pass its folder with --dataset_dir"
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist: {hint}")
    if not any(p for p in root.iterdir() if not common.is_junk(p)):
        raise FileNotFoundError(f"data folder {root} is empty: {hint}")
    return root


_CHECKED: dict[str, list[list[Any]]] = {}
_CHECK_LOCK = threading.Lock()


def _stamp_file(cache_dir: str | Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "checked_cases.json"


def check_cases(
    module: Any, cases: Sequence[common.Case], root: str | Path, cache_dir: str | Path | None = None
) -> CheckReport:
    """Check ``cases`` with the reader's ``check_case`` (as :func:`calibmonai.datasets.check_folder` does) and return
    the report. A case whose files have the same size and modification time as when it last passed is not read
    again: the passing cases' file stamps are kept in ``<cache_dir>/checked_cases.json`` (and in memory)."""
    report = CheckReport(dataset=module.NAME, root=str(root))
    stamp_path = _stamp_file(cache_dir)
    with _CHECK_LOCK:
        stored: dict[str, list[list[Any]]] = {}
        if stamp_path is not None and stamp_path.is_file():
            try:
                stored = json.loads(stamp_path.read_text())
            except (ValueError, OSError):
                stored = {}
        passed = dict(stored)
        for case in cases:
            key = f"{module.NAME}:{case.id}:{case.paths()}"
            stamp = _case_stamp(case)
            report.cases.append(case.id)
            if stamp == _CHECKED.get(key) or stamp == stored.get(key):
                _CHECKED[key] = passed[key] = stamp
                continue
            try:
                problems = list(module.check_case(case))
            except Exception as e:  # a reader bug or an OS error must not hide the other cases
                problems = [f"could not check {case.id}: {type(e).__name__}: {e}"]
            if problems:
                report.problems[case.id] = problems
                passed.pop(key, None)
            else:
                _CHECKED[key] = stamp
                passed[key] = stamp
        if stamp_path is not None and passed != stored:
            stamp_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(stamp_path) as tmp:
                tmp.write_text(json.dumps(passed))
    return report


def bundle_datalist(
    dataset: str,
    dataset_dir: str | Path,
    part: str,
    split_file: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    check: bool = True,
    from_data: bool = False,
    **split_kwargs: Any,
) -> list[dict[str, Any]]:
    """The datalist entries of one part (``training``, ``validation`` or ``test``) of a bundle's split.

    1. ``dataset_dir`` must exist and hold something (``FileNotFoundError`` naming it; nothing is downloaded or
       prepared);
    2. the cases are found by the dataset's reader; the split is ``split_file`` (a file of
       :func:`write_bundle_split`; ``split_kwargs`` such as MRBrainS18's ``fold`` pick a fold) or, when
       ``from_data`` (the bundles' ``--split_from_data true``) or when ``split_file`` is ``None`` or does not
       exist, the seeded split of the subjects found (``seed``; the same for every workflow of the run);
    3. with ``check``, every case of the split (all three parts) is checked first (:func:`check_cases`); any
       problem raises :class:`DatasetCheckError` whose message is the :func:`calibmonai.datasets.format_report` text,
       naming each file.

    Raises:
        FileNotFoundError: missing or empty folder, no dataset layout in it, or a split naming subjects the folder
            does not hold (the message says how to write a split of the folder).
        DatasetCheckError: unusable cases in the split.
    """
    if part not in common.SPLIT_KEYS:
        raise ValueError(f"part must be one of {common.SPLIT_KEYS}, got {part!r}")
    module = get_dataset(dataset)
    root = _require_folder(dataset_dir, module.NAME)
    cases = module.find_cases(root, strict=False)
    fold = split_kwargs.get("fold")
    if split_file is not None and Path(split_file).is_file() and not from_data:
        split = load_bundle_split(split_file, fold=fold if _takes_fold(module) else None)
    else:
        if from_data:
            logger.info(f"split_from_data: the seeded split (seed {seed}) of the subjects in {root}, not {split_file}")
        elif split_file is not None:
            logger.warning(
                f"no split file at {split_file}: using the seeded split (seed {seed}) of the subjects in {root}"
            )
        kwargs = {"fold": int(fold or 0)} if _takes_fold(module) else {}
        split = module.make_split(sorted({c.subject for c in cases}, key=common.natural_key), seed=int(seed), **kwargs)
    wanted = {i for k in common.SPLIT_KEYS for i in split[k]}
    in_split = [c for c in cases if c.subject in wanted or c.id in wanted]
    try:
        datalist = common.make_datalist(in_split, split)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e} ({root}). For a partial or re-released download, run every workflow with --split_from_data true "
            "(the seeded split of the subjects found), or write that split once: python -m monai.bundle run "
            "write_split --config_file <bundle>/configs/train.yaml --dataset_dir <folder> --split_from_data true "
            "--split_file <new split.json>, and run with --split_file <new split.json>"
        ) from None
    if check:
        report = check_cases(module, in_split, root, cache_dir)
        if report.problems:
            raise DatasetCheckError(
                f"{len(report.problems)} case(s) of the split cannot be used; fix or remove them "
                "(calibmonai check-data):\n"
                + format_report(report)
            )
    return datalist[part]


# -------------------------------------------------------------------------------------------- transforms


class LabelCentredSlicesd(MapTransform):
    """Keep ``num_slices`` slices (last spatial axis) centred on the labelled voxels of ``label_key`` (the middle
    slices when the label is empty), zero-padding volumes with fewer slices: the FLARE21 protocol's fixed depth.

    Uses MONAI's ``SpatialCrop`` and ``SpatialPad`` so the crop is recorded like any other. Items without
    ``label_key`` (inference) are left as they are.
    """

    def __init__(
        self, keys: KeysCollection, label_key: str = "label", num_slices: int = 30, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_slices) < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.label_key = label_key
        self.num_slices = int(num_slices)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import SpatialCrop, SpatialPad

        d = dict(data)
        if self.label_key not in d:
            return d
        label = torch.as_tensor(d[self.label_key])
        depth = int(label.shape[-1])
        nz = torch.nonzero(label.reshape(-1, depth).sum(0) > 0).flatten()
        centre = (int(nz.min()) + int(nz.max()) + 1) // 2 if nz.numel() else depth // 2
        start = min(max(centre - self.num_slices // 2, 0), max(depth - self.num_slices, 0))
        end = min(start + self.num_slices, depth)
        ndim = label.ndim - 1
        crop = SpatialCrop(roi_slices=[slice(None)] * (ndim - 1) + [slice(start, end)])
        pad = SpatialPad(spatial_size=[-1] * (ndim - 1) + [self.num_slices])
        for key in self.key_iterator(d):
            d[key] = pad(crop(d[key]))
        return d


def _options(p: Protocol, preprocess: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(preprocess) - set(p.options))
    if unknown:
        allowed = sorted(p.options) or "none"
        raise ValueError(f"unknown preprocess option(s) {unknown} for {p.dataset}; allowed: {allowed}")
    return {**p.options, **preprocess}


def load_transforms(
    dataset: str, image_size: Sequence[int] | None = None, keys: Sequence[str] = ("image", "label"), **preprocess: Any
) -> list:
    """The deterministic part of a bundle's preprocessing (cached on disk by the bundles' ``PersistentDataset``):
    load, channel order, label mapping, orientation, resampling, intensity normalisation to [0, 1] and the in-plane
    size, for a datalist entry of ``dataset`` (see the module docstring for each dataset).

    Args:
        dataset: registry name.
        image_size: in-plane ``(H, W)`` (the dataset's default when ``None``).
        keys: ``("image", "label")`` for training and evaluation, ``("image",)`` for inference (every step is
            invertible, so ``Invertd`` maps predictions back to the scan's grid).
        preprocess: dataset options (``spacing``, ``window``, ``num_slices``; see :data:`PROTOCOLS`).
    """
    from monai.transforms import (
        EnsureTyped,
        Orientationd,
        ResizeWithPadOrCropd,
        Resized,
        ScaleIntensityd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    from calibmonai.datasets.itk_reader import load_imaged

    p = protocol(dataset)
    opts = _options(p, preprocess)
    size = [int(s) for s in (image_size if image_size is not None else p.image_size)]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive sizes (H, W), got {image_size}")
    keys = list(keys)
    if not keys or keys[0] != "image" or any(k not in ("image", "label") for k in keys):
        raise ValueError(f"keys must be ['image'] or ['image', 'label'], got {keys}")
    has_label = "label" in keys
    interp = ["bilinear", "nearest"][: len(keys)]

    if p.volumes:
        out: list = [load_imaged(keys, image_only=True, ensure_channel_first=True)]
    else:
        from calibmonai.datasets.busi import LoadBUSId

        out = [LoadBUSId(keys)]
    if p.orientation:
        out.append(Orientationd(keys, axcodes=p.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    # channels and labels of the task
    if p.dataset == "mrbrains18" and has_label:
        from calibmonai.datasets.mrbrains18 import label_transform

        out.append(label_transform("label"))
    elif p.dataset == "brats19" and has_label:
        from calibmonai.datasets.brats import BratsLabelsd

        out.append(BratsLabelsd("label"))
    elif p.dataset == "promise12":
        from calibmonai.datasets.promise12 import SelectChannelsd, label_transform

        out.append(SelectChannelsd("image", channels=(0,)))
        if has_label:
            out.append(label_transform("label"))
    # resampling and intensities
    if "spacing" in opts:
        out.append(Spacingd(keys, pixdim=[float(s) for s in opts["spacing"]], mode=interp))
    if "window" in opts:
        lo, hi = (float(v) for v in opts["window"])
        out.append(ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    else:
        out.append(ScaleIntensityd("image", minv=0.0, maxv=1.0, channel_wise=True))
    # in-plane size
    spatial = size + ([-1] if p.volumes else [])
    if p.in_plane == "resize":
        out.append(Resized(keys, spatial_size=spatial, mode=interp))
    elif p.in_plane == "pad_or_crop":
        out.append(ResizeWithPadOrCropd(keys, spatial_size=spatial))
    else:
        out.append(SpatialPadd(keys, spatial_size=spatial))
    if "num_slices" in opts and has_label:
        out.append(LabelCentredSlicesd(keys, label_key="label", num_slices=int(opts["num_slices"])))
    out.append(EnsureTyped(keys, dtype=torch.float32))
    return out


def slice_sampling(
    dataset: str,
    image_size: Sequence[int] | None = None,
    slices_per_volume: int = 4,
    pos: float | None = None,
    neg: float | None = None,
) -> list:
    """The random part of the training preprocessing, after the cached :func:`load_transforms`: for volumes,
    ``slices_per_volume`` axial slices of ``image_size`` drawn with MONAI's ``RandCropByPosNegLabeld`` (``[H, W, 1]``
    crops centred on foreground / background voxels in the ratio ``pos:neg``, the dataset's default when ``None``)
    squeezed to 2D; for 2D images nothing but the type (the whole image is the sample). No augmentation, as in the
    MbLS paper."""
    from monai.transforms import EnsureTyped, RandCropByPosNegLabeld, SqueezeDimd

    p = protocol(dataset)
    keys = ["image", "label"]
    if not p.volumes:
        return [EnsureTyped(keys, dtype=torch.float32)]
    size = [int(s) for s in (image_size if image_size is not None else p.image_size)]
    return [
        RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=size + [1],
            pos=p.pos if pos is None else float(pos),
            neg=p.neg if neg is None else float(neg),
            num_samples=int(slices_per_volume),
            allow_smaller=False,
        ),
        SqueezeDimd(keys, dim=-1),
        EnsureTyped(keys, dtype=torch.float32),
    ]


# --------------------------------------------------------------------------------------------- inference


def scan_datalist(dataset: str, inputs: str | Sequence[str], num_modalities: int = 1) -> list[dict[str, Any]]:
    """The inference items of a bundle: :func:`calibmonai.inference.scan_datalist` for volume datasets, which also
    reads the files as the dataset names them (the reader module's ``SCAN_MODALITY_NAMES``, e.g. a BraTS case folder's
    ``<id>_flair`` ... ``<id>_t2``, and ``SCAN_SKIP_NAMES``, e.g. its ``<id>_seg``); for 2D-image datasets (BUSI) the
    image files (:data:`IMAGE_EXTENSIONS`) of a folder, a glob or a list, minus BUSI's own ``*_mask*.png`` files. An
    empty list when nothing is found (the inference engine then names the input)."""
    from calibmonai.inference import scan_datalist as volume_datalist

    module = get_dataset(dataset)
    if module.NAME not in PROTOCOLS or protocol(dataset).volumes:
        names = getattr(module, "SCAN_MODALITY_NAMES", None)
        return volume_datalist(inputs, num_modalities, names, getattr(module, "SCAN_SKIP_NAMES", ()))
    from calibmonai.inference import input_files

    try:
        files = input_files(inputs, IMAGE_EXTENSIONS)
    except FileNotFoundError:
        return []
    files = [f for f in files if "_mask" not in Path(f).stem.lower()]
    return [{"case": Path(f).stem, "image": f, "files": [f]} for f in files]
