"""Left atrium: the 2018 Atrial Segmentation Challenge (3D late gadolinium-enhanced MRI, University of Utah).

Xiong, Z. et al. "A global benchmark of algorithms for segmenting the left atrium from late
gadolinium-enhanced cardiac magnetic resonance imaging." Medical Image Analysis 67, 2021.
http://atriaseg2018.cardiacatlas.org/

Two layouts are read (``layout="auto"``: ``h5`` when any case folder holds ``mri_norm2.h5``, else ``nrrd``):

``nrrd`` -- the challenge download (100 training patients; 0.625 mm isotropic, 88 slices)::

    Training Set/<ID>/lgemri.nrrd     LGE-MRI volume
    Training Set/<ID>/laendo.nrrd     LA cavity, 0 = background, 255 = left atrium
    Testing Set/<ID>/...              the challenge test set: not read (the protocol below uses the 100
                                      training patients)

``h5`` -- the preprocessed copy of UA-MT (Yu et al., MICCAI 2019; ``yulequan/UA-MT``), used by SASSNet and MEEP:
each volume z-normalised, cropped around the atrium with a random margin, labels ``laendo == 255``::

    2018LA_Seg_Training Set/<ID>/mri_norm2.h5   datasets "image" (float32, x y z) and "label" (uint8, 0/1)
    train.list, test.list (and MEEP's val.list)  one <ID> a line, beside the folder of cases (or in it)

Case folders are found up to four levels below the given folder (junk such as the ``desktop.ini`` shipped in
one UA-MT case folder, ``._*`` and ``.DS_Store`` ignored; folder names may contain spaces); ``id`` = ``subject``
= the folder name. Labels are binary: :func:`label_transform` maps 255 (challenge) and 1 (h5) to 1.

Split (MEEP, Larrazabal et al. 2023; UA-MT): 80 training / 20 test patients, 5% of the training patients for
validation, i.e. 76/4/20. ``train.list`` / ``test.list`` / ``val.list`` are followed when present; without
them, the full set of 100 patients gets the published split (UA-MT's ``test.list``, which MEEP reuses, and
MEEP's ``val.list``: 4 of the training ids) whatever the seed, and any other set of patients a seeded
split with the same fractions.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, MapLabelValued, MapTransform
from monai.utils import ensure_tuple

from calibmonai.datasets import common
from calibmonai.datasets.common import Case
from calibmonai.datasets.promise12 import check_itk_case, find_folders

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "H5_LABEL_VALUES",
    "MODALITIES",
    "SCAN_MODALITY_NAMES",
    "SCAN_SKIP_NAMES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "PUBLISHED_TEST_IDS",
    "MEEP_VALIDATION_IDS",
    "SPACING",
    "LAYOUTS",
    "LIST_FILES",
    "read_list",
    "read_lists",
    "find_cases",
    "case_lists",
    "check_case",
    "make_split",
    "datalist",
    "H5Reader",
    "LoadLeftAtriumd",
    "label_transform",
]

NAME = "left_atrium"
CLASS_NAMES = ("background", "left atrium")
#: values of the challenge's ``laendo.nrrd``
LABEL_VALUES = (0, 255)
#: values of the ``label`` array of the UA-MT ``mri_norm2.h5`` files
H5_LABEL_VALUES = (0, 1)
MODALITIES = ("LGE-MRI",)
#: inference on files named as published: a challenge patient folder's ``lgemri.nrrd`` (case: the patient folder), its ``laendo``/``lawall`` labels left out
SCAN_MODALITY_NAMES = ("lgemri",)
SCAN_SKIP_NAMES = ("laendo", "lawall")

SPLIT_COUNTS = (76, 4, 20)
#: the 100 training patients of the challenge (sorted), as in UA-MT's ``2018LA_Seg_Training Set``
KNOWN_IDS = tuple(
    sorted(
        """
        06SR5RBREL16DQ6M8LWS 0RZDK210BSMWAA6467LU 1D7CUD1955YZPGK8XHJX 1GU15S0GJ6PFNARO469W 1MHBF3G6DCPWHSKG7XCP
        23X6SY44VT9KFHR7S7OC 2XL5HSFSE93RMOJDRGR4 38CWS74285MFGZZXR09Z 3C2QTUNI0852XV7ZH4Q1 3DA0T2V6JJ2NLUAV6FWM
        4498CA6DZWELOXCBRYRF 45C45I6IXAFGNRO067W9 4CHFJGF6ZUM7CMZTNFQF 4EPVTT1HPA8U60CDUKXE 57SGAJMLCTCH92QUA0EE
        5BHTH9RHH3PQT913I59W 5FKQL4K14KCB72Y8YMC2 5HH0WPWIY06DLAFOBQ4M 5QFK2PMHNX7UALK52NNA 5UB5KFD2PK38Z4LS6W80
        6799D6LEBH3NSRV1KH27 78NJ5YFQF72BGC8RO51C 7FUCNXB39F78WTOP5K71 8GYK8A9MBRC9TV0FVSRA 8M99G0JLAXG9GLPV0O8G
        8RE90C8H5DKF4V6HO8UU 8ZG2TRZ81MAWHZPN9KKG 9DCM2IB45SK6YKQNYUQY 9DHWWP5Y66VDMPXISZ13 9DQYTIU00I4JC0OEOKQQ
        A11O45O3NAXWM7T2H8CH A4R1S23KR0KU2WSYHK2X A5RNNK0A891WUSC2V624 AT5CRO5JUDBWD4RUPXSQ BNK95S2SJXEGSW7VAKYU
        BXJWOUYP2J3EN4U92517 BYSRSI3H4YTWKMM3MADP BZUFJX66T0W6ZPVTL9DU CB5P5W7X310NIIVU7UZV CBIJFVZ5L9BS0LKWE8YL
        CCGAKN4EDT72KC8TTJ76 CLXFYOBQDCVXQ9P7YC07 CMPXO4J23G58J53Q98SZ CZPMV6KWZ4I7IJJP9FOK DLKXBV73A55ZTSZ0QQI2
        DQ5UYBGR5QP6L692QSG6 DYXSCIWHLSUOZIDDSZ40 E2ZMO66WGS74UKXTZPPQ EJ5V7SPR4961JWD6SS8V FGM5NIWN3URY4HF4WNUW
        GSC9KNY0VEZXFSGWNF25 HVE7DR3CUA2IM3RC6OMA HZZ4O0BRKF8S0YX3NNF7 I2VZ7N8H9QYNYT7ZZF1Y IDWWHGWJ5STOQXSDT6GU
        IIY6TYJMTJIZRIZLB9YW IJJY51YW3W4YJJ7DTVTK IQYKPTWXVV9H0IHB8YXC JEC6HJ7SQJXBKVREX03F JGFOLWJF7YCYD8DPHQNH
        K32FD6LRSUSSXGS1YUOX KM5RYAMP4P4ZP6XWP3Q2 KSNYHUBHHUJTYJ14UQZR LH4FVU3TQDEC87YGN6FL LJSDNMND9SHKM7Q4IRHJ
        MFTDVMBWFNQ3F5KHBRDR MJHV7F65TB2A76CQLOC3 MVKIPGBKTNSENNP1S4HB O5TSIKRD4AIB8K84WIR9 OIRDLE32TXZX942FVZMM
        P1OTI3IWJUIB5NRLULLH PVNXUK681N9BY14K4Z86 Q0MEX9ZIKAGJORSPLQ3Y Q7J0WYM695R9MA285ZW0 QZC1W0FNR19KJFLOCFLH
        R8ER97O9UUN77C02VE2J RSZY41MT2FGDKHWWL5L2 SN4LF8SGBSRQUPTDSX78 TDDI6L3Y0L9VVFP9MNFS ULHWPWKKLTE921LQLH1P
        UPT6DX9IQY9JAZ7HJKA7 UTBUJIWZMKP64E3N73YC UZUZZT2W9IUSHL6ASOX3 V0MZOWJ6MU3RMRCV9EXR VDOF02M8ZHEAADFMS6NP
        VG4C826RAAKVMV9BQLVD VIXBEFTNVHZWKAKURJBN VQ2L3WM8KEVF6L44E6G9 WBG9WYZ1B25WDT5WAT8T WMDG2EFA6L2SNDZXIRU0
        WNPKE0W404QE9AELX1LR WSJB9P4JCXUVHBOYFVWL WW8F5CO4S4K5IM5Z7EXX X18LU5AOBNNDMLTA0JZL XYDLYJ5CS19FDBVLJIPI
        Y7ZU0B2APPF54WG6PDMF YDKD1HVHSME6NVMA8I39 Z9GMG63CJLL0VW893BB1 ZIJLJAVQV3FJ6JSQOH1E ZQPMJ4XEC5A4BISD45P1
        """.split()
    )
)
#: UA-MT's (and MEEP's) ``test.list``
PUBLISHED_TEST_IDS = tuple(
    """
    ULHWPWKKLTE921LQLH1P UPT6DX9IQY9JAZ7HJKA7 UTBUJIWZMKP64E3N73YC V0MZOWJ6MU3RMRCV9EXR VDOF02M8ZHEAADFMS6NP
    VG4C826RAAKVMV9BQLVD VIXBEFTNVHZWKAKURJBN VQ2L3WM8KEVF6L44E6G9 WBG9WYZ1B25WDT5WAT8T WMDG2EFA6L2SNDZXIRU0
    WNPKE0W404QE9AELX1LR WSJB9P4JCXUVHBOYFVWL WW8F5CO4S4K5IM5Z7EXX X18LU5AOBNNDMLTA0JZL XYDLYJ5CS19FDBVLJIPI
    Y7ZU0B2APPF54WG6PDMF YDKD1HVHSME6NVMA8I39 Z9GMG63CJLL0VW893BB1 ZIJLJAVQV3FJ6JSQOH1E ZQPMJ4XEC5A4BISD45P1
    """.split()
)
#: MEEP's ``val.list`` (5% of the 80 training patients)
MEEP_VALIDATION_IDS = ("23X6SY44VT9KFHR7S7OC", "AT5CRO5JUDBWD4RUPXSQ", "CB5P5W7X310NIIVU7UZV", "CLXFYOBQDCVXQ9P7YC07")
#: voxel size of the challenge volumes (mm); the h5 files carry none
SPACING = (0.625, 0.625, 0.625)
LAYOUTS = ("nrrd", "h5")
#: split part -> list file names (the first present wins)
LIST_FILES = {"training": ("train.list",), "validation": ("val.list",), "test": ("test.list",)}

_IMAGE, _LABEL, _H5 = "lgemri.nrrd", "laendo.nrrd", "mri_norm2.h5"
_CASE_FILES = (_IMAGE, _LABEL, _H5)
_TEST_DIR = re.compile(r"^test(ing)?([ _-]?(set|data))?$", re.IGNORECASE)
_VALIDATION_FRACTION = 0.05


def _case_file(folder: Path, name: str) -> Path | None:
    p = folder / name
    if p.is_file():
        return p
    for q in common.list_dir(folder, dirs=False):
        if q.name.lower() == name:
            return q
    return None


def _is_case_dir(folder: Path) -> bool:
    return any(p.name.lower() in _CASE_FILES for p in common.list_dir(folder, dirs=False))


def read_list(path: str | Path) -> list[str]:
    """The ids of a UA-MT style list file: one a line, blank lines and ``#`` comments skipped; a line naming a
    path (``<ID>/mri_norm2.h5``) gives its case folder name."""
    ids = []
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip().strip("\r")
        if not line or line.startswith("#"):
            continue
        p = Path(line.replace("\\", "/"))
        ids.append(p.parent.name if p.name.lower() in _CASE_FILES and p.parent.name else p.name)
    return ids


def read_lists(folder: str | Path) -> dict[str, tuple[Path, list[str]]]:
    """``{"training"|"validation"|"test": (file, ids)}`` of the list files in ``folder`` (those present)."""
    folder = Path(folder)
    out = {}
    if not folder.is_dir():
        return out
    names = {p.name.lower(): p for p in common.list_dir(folder, dirs=False)}
    for part, candidates in LIST_FILES.items():
        for name in candidates:
            if name in names:
                out[part] = (names[name], read_list(names[name]))
                break
    return out


def _find_lists(case_parent: Path, root: Path) -> dict[str, tuple[Path, list[str]]]:
    """The list files beside the folder of cases, in it, or in a folder between it and ``root``."""
    candidates = [case_parent.parent, case_parent]
    p = case_parent.parent
    while p != root and root in p.parents:
        p = p.parent
        candidates.append(p)
    for folder in candidates:
        lists = read_lists(folder)
        if lists:
            return lists
    return {}


def _locate(root: str | Path, layout: str) -> tuple[list[Path], str, dict[str, tuple[Path, list[str]]]]:
    if layout not in ("auto",) + LAYOUTS:
        raise ValueError(f"layout must be 'auto', 'nrrd' or 'h5', got {layout!r}")
    root = Path(root)
    dirs = find_folders(root, _is_case_dir, skip=_TEST_DIR.match)
    if not dirs:
        raise FileNotFoundError(
            f"no left atrium case folder (<ID>/lgemri.nrrd + laendo.nrrd, or <ID>/mri_norm2.h5) in {root}"
        )
    if layout == "auto":
        layout = "h5" if any(_case_file(d, _H5) is not None for d in dirs) else "nrrd"
    names: dict[str, Path] = {}
    for d in dirs:
        if d.name in names:
            raise ValueError(f"case {d.name} is in two folders: {names[d.name]} and {d}")
        names[d.name] = d
    return dirs, layout, _find_lists(dirs[0].parent, root)


def find_cases(root: str | Path, strict: bool = True, layout: str = "auto") -> list[Case]:
    """The cases under ``root``, plus the ids named by ``train.list``/``test.list``/``val.list`` that have no
    case folder (their files are missing); a listed case records its part in ``extra["list"]``.

    Args:
        root: the challenge ``Training Set`` folder, the UA-MT ``data`` folder, or a parent.
        strict: raise ``FileNotFoundError`` naming the first missing file; when ``False`` keep the expected path
            for :func:`check_case` to report.
        layout: ``"auto"``, ``"nrrd"`` or ``"h5"``; each case records it in ``extra["layout"]``.
    """
    dirs, layout, lists = _locate(root, layout)
    folders = {d.name: d for d in dirs}
    listed: dict[str, tuple[str, Path]] = {}
    for part, (path, ids) in lists.items():
        for cid in ids:
            if cid in listed and listed[cid][0] != part:
                raise ValueError(f"{cid} is in both {listed[cid][1]} and {path}")
            listed[cid] = (part, path)
            folders.setdefault(cid, dirs[0].parent / cid)
    cases = []
    for cid in sorted(folders, key=common.natural_key):
        folder = folders[cid]
        names = (_H5, _H5) if layout == "h5" else (_IMAGE, _LABEL)
        paths = []
        for name in names:
            p = _case_file(folder, name) if folder.is_dir() else None
            if p is None:
                p = folder / name
                if strict:
                    raise FileNotFoundError(f"missing file: {p}")
            paths.append(str(p))
        extra = {"layout": layout}
        if cid in listed:
            extra["list"] = listed[cid][0]
        cases.append(Case(id=cid, subject=cid, images=(paths[0],), label=paths[1], extra=extra))
    return cases


def case_lists(cases: Sequence[Case]) -> dict[str, list[str]]:
    """``{"training"|"validation"|"test": ids}`` of the list files the cases were named in
    (``extra["list"]``, set by :func:`find_cases`); empty when the folder has no list file."""
    out: dict[str, list[str]] = {}
    for c in cases:
        if "list" in c.extra:
            out.setdefault(c.extra["list"], []).append(c.subject)
    return out


# ---------------------------------------------------------------------------------------------- checks


def _check_h5(path: str) -> list[str]:
    import h5py

    if not Path(path).is_file():
        return [f"missing file: {path}"]
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                return [f"{path} lacks the dataset(s) {missing} (has {sorted(f.keys())})"]
            image_shape, label_shape = tuple(f["image"].shape), tuple(f["label"].shape)
            problems = []
            if len(image_shape) != 3:
                problems.append(f"{path}: 'image' is not 3D: shape {image_shape}")
            if image_shape != label_shape:
                problems.append(f"shape mismatch in {path}: 'image' is {image_shape} but 'label' is {label_shape}")
            label = f["label"][()]
    except Exception as e:  # h5py raises OSError for truncated or non-HDF5 files
        return [f"unreadable or corrupt file: {path} ({type(e).__name__}: {e})"]
    return problems + common.check_label_values(label, H5_LABEL_VALUES, f"{path} ('label')")


def check_case(case: Case) -> list[str]:
    """Problems of one case, each naming the file: missing or unreadable file, image/label on different grids,
    label values outside 0/255 (``laendo.nrrd``) or 0/1 (the h5 ``label`` array), an h5 file without its
    ``image``/``label`` arrays."""
    if case.extra.get("layout") == "h5":
        return _check_h5(case.images[0])
    return check_itk_case(case, LABEL_VALUES)


# ---------------------------------------------------------------------------------------------- splits


def make_split(
    case_ids: Sequence[str],
    seed: int = 0,
    lists: Mapping[str, Sequence[str]] | None = None,
    published: bool = True,
) -> dict[str, list[str]]:
    """``{"training", "validation", "test"}`` patient ids.

    Args:
        case_ids: the patient ids.
        seed: seed of the random parts (validation drawn from ``lists["training"]`` when there is no
            validation list; the whole split for an incomplete set of patients).
        lists: ids by part (``"training"``, ``"validation"``, ``"test"``, as read from the list files); the
            training part defaults to the ids in no other list, the validation part to 5% of the training
            ids (at least one).
        published: for the 100 patients of :data:`KNOWN_IDS` without ``lists``, return UA-MT's test list and
            MEEP's validation list (76/4/20) rather than a seeded split.

    Raises:
        ValueError: when a list names an id that is not in ``case_ids`` or an id is in two lists.
    """
    ids = sorted({str(i) for i in case_ids}, key=common.natural_key)
    if lists:
        known = set(ids)
        parts = {k: [str(i) for i in lists.get(k, ())] for k in common.SPLIT_KEYS}
        for k, listed in parts.items():
            unknown = [i for i in listed if i not in known]
            if unknown:
                raise ValueError(f"the {k} list names ids with no case: {unknown[:5]}")
        if not parts["training"]:
            taken = set(parts["validation"]) | set(parts["test"])
            parts["training"] = [i for i in ids if i not in taken]
        if "validation" not in lists or not lists.get("validation"):
            pool = sorted(set(parts["training"]) - set(parts["test"]), key=common.natural_key)
            n_val = max(1, int(math.floor(_VALIDATION_FRACTION * len(pool) + 0.5))) if len(pool) >= 2 else 0
            order = list(pool)
            random.Random(int(seed)).shuffle(order)
            parts["validation"] = order[:n_val]
        val = set(parts["validation"])
        parts["training"] = [i for i in parts["training"] if i not in val]
        split = {k: sorted(dict.fromkeys(v), key=common.natural_key) for k, v in parts.items()}
        return common.load_split(split)
    if published and set(ids) == set(KNOWN_IDS):
        test, val = set(PUBLISHED_TEST_IDS), set(MEEP_VALIDATION_IDS)
        train = [i for i in ids if i not in test and i not in val]
        return {"training": train, "validation": sorted(val, key=common.natural_key), "test": sorted(test, key=common.natural_key)}
    return common.seeded_split(ids, SPLIT_COUNTS, seed)


def datalist(
    root: str | Path, split: Any = None, seed: int = 0, layout: str = "auto", published: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist (``image``/``label``: ``lgemri.nrrd``/``laendo.nrrd``, or the same ``mri_norm2.h5`` for
    both, plus ``case``, ``subject``, ``layout``), split by the list files found beside the cases when
    ``split`` is ``None`` (see :func:`make_split`)."""
    cases = find_cases(root, layout=layout)
    if split is None:
        split = make_split([c.subject for c in cases], seed=seed, lists=case_lists(cases) or None, published=published)
    return common.make_datalist(cases, split)


# ------------------------------------------------------------------------------------------- transforms


class H5Reader(ImageReader):
    """MONAI image reader of one array of an HDF5 file (``h5py``), e.g. ``image`` or ``label`` of UA-MT's
    ``mri_norm2.h5``; the array is spatial (no channel), with the affine of an isotropic grid of ``spacing``.

    Use as ``LoadImage(reader=H5Reader("label"))``, or through :class:`LoadLeftAtriumd`.

    Args:
        dataset: name of the array in the file.
        spacing: voxel size (mm) written into the affine (the h5 files carry none).
    """

    def __init__(self, dataset: str = "image", spacing: Sequence[float] = SPACING) -> None:
        super().__init__()
        self.dataset = str(dataset)
        self.spacing = tuple(float(s) for s in spacing)

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return is_supported_format(filename, ["h5", "hdf5"])

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[np.ndarray] | np.ndarray:
        import h5py

        out = []
        for name in ensure_tuple(data):
            with h5py.File(name, "r") as f:
                if self.dataset not in f:
                    raise KeyError(f"{name} has no dataset {self.dataset!r} (has {sorted(f.keys())})")
                out.append(np.asarray(f[self.dataset][()]))
        return out if len(out) > 1 else out[0]

    def get_data(self, img: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, dict]:
        arrays = [img] if isinstance(img, np.ndarray) else list(img)
        affine = np.diag([*self.spacing[: arrays[0].ndim], 1.0]) if arrays[0].ndim <= 3 else np.eye(4)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(arrays[0].shape),
            "original_channel_dim": float("nan") if len(arrays) == 1 else 0,
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta


class LoadLeftAtriumd(MapTransform):
    """Load the left atrium files of a datalist entry whatever the layout: ``.h5`` paths through
    :class:`H5Reader` (the array named after the key, or ``datasets[key]``), others (``.nrrd``) through MONAI's
    ``ITKReader`` (:class:`~calibmonai.datasets.itk_reader.AnyPixelITKReader`, any voxel type). The result is a ``MetaTensor`` per key, channel first when ``ensure_channel_first``.

    Args:
        keys: the datalist keys to load.
        datasets: key -> name of the h5 array; defaults to the key itself (``image``, ``label``).
        ensure_channel_first: add the channel dimension.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        datasets: Mapping[str, str] | None = None,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        names = dict(datasets or {})
        self._h5 = {k: H5Reader(names.get(str(k), str(k))) for k in self.keys}
        from calibmonai.datasets.itk_reader import AnyPixelITKReader

        self._itk = AnyPixelITKReader()
        self._loader = LoadImage(image_only=True, ensure_channel_first=ensure_channel_first)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            reader = self._h5[key] if self._h5[key].verify_suffix(path) else self._itk
            d[key] = self._loader(path, reader=reader)
        return d


def label_transform(keys: KeysCollection = "label", allow_missing_keys: bool = False) -> MapLabelValued:
    """MONAI transform giving the binary classes of both layouts: 255 (``laendo.nrrd``) and 1 (h5) -> 1."""
    return MapLabelValued(keys, orig_labels=[0, 1, 255], target_labels=[0, 1, 1], allow_missing_keys=allow_missing_keys)


class HeartCropd(MapTransform):
    """Crop the 2018 challenge's full-size volumes (``layout == "nrrd"``) to the atrium's bounding box plus a margin
    (MONAI ``CropForegroundd`` on the label), the region MEEP and UA-MT train on; the UA-MT ``mri_norm2.h5`` volumes
    are cropped already and pass through unchanged. A named transform (not a lambda in the config), so it pickles for
    data-loader workers on every platform.

    Args:
        keys: the image and label keys cropped together.
        source_key: the label whose foreground gives the box.
        margin: voxels added on each side of the box (per axis or one value).
        layout_key: the datalist field telling the layout.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), source_key: str = "label", margin: Any = (20, 20, 10), layout_key: str = "layout") -> None:
        super().__init__(keys)
        from monai.transforms import CropForegroundd

        self.layout_key = layout_key
        self.crop = CropForegroundd(keys=keys, source_key=source_key, margin=margin, allow_smaller=True)

    def __call__(self, data: Any) -> Any:
        if data.get(self.layout_key) != "nrrd":
            return data
        return self.crop(data)
