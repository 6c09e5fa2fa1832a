"""BUSI: Breast Ultrasound Images dataset (Baheya Hospital, Cairo; 600 women, 2018).

Al-Dhabyani, W., Gomaa, M., Khaled, H., Fahmy, A. "Dataset of breast ultrasound images", Data in Brief 28,
104863, 2020. https://doi.org/10.1016/j.dib.2019.104863

Layout of the download (the given folder may be ``Dataset_BUSI_with_GT`` or a parent of it)::

    Dataset_BUSI_with_GT/benign/benign (1).png          437 images, RGB-coded grey-level ultrasound
    Dataset_BUSI_with_GT/benign/benign (1)_mask.png     the tumour mask, 0/255 (copies also carry 0/1 or RGB masks)
    Dataset_BUSI_with_GT/benign/benign (4)_mask_1.png   a second (third...) lesion of the same image
    Dataset_BUSI_with_GT/malignant/malignant (1).png    210 images
    Dataset_BUSI_with_GT/normal/normal (1).png          133 images without lesion (not used)

One case per image of ``benign/`` and ``malignant/`` (647), ``id`` = ``subject`` = the file stem
(``"benign (12)"``; the dataset has no patient ids, so the split is per image). The label is the union of
``<stem>_mask.png`` and every ``<stem>_mask_<k>.png`` (datalist field ``masks``). Images are read as grey
level (RGB -> L, ITU-R 601 luma; the three channels are equal in BUSI), masks as ``mask > 0``: a mask may hold
0 and any one foreground value (0/255 as released, 0/1 or RGB in re-distributed copies), see :func:`check_mask_values`.
:class:`LoadBUSId` loads both with MONAI's PIL reader, so arrays follow MONAI's 2D convention
(spatial shape ``(width, height)``); :func:`preprocessing` resizes to 256 x 256.

Split (MbLS segmentation study, Murugesan et al. 2023): 445/65/137 of the 647 images; the same fractions
otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from calibmonai.datasets import common
from calibmonai.datasets.common import Case

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "MODALITIES",
    "SPLIT_COUNTS",
    "KNOWN_IDS",
    "CATEGORIES",
    "find_cases",
    "check_case",
    "make_split",
    "datalist",
    "check_mask_values",
    "read_image",
    "read_mask",
    "LoadBUSId",
    "preprocessing",
]

NAME = "busi"
CLASS_NAMES = ("background", "tumour")
#: raw values of the mask files as released; 0 and any one other value are accepted (:func:`check_mask_values`)
LABEL_VALUES = (0, 255)
MODALITIES = ("US",)
SPLIT_COUNTS = (445, 65, 137)
#: the image folders read; ``normal/`` (no lesion) is ignored
CATEGORIES = ("benign", "malignant")
KNOWN_IDS = tuple(f"benign ({i})" for i in range(1, 438)) + tuple(f"malignant ({i})" for i in range(1, 211))

_MASK = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)


def _is_root(folder: Path) -> bool:
    return all(common.child_dir(folder, c) is not None for c in CATEGORIES)


def find_cases(root: str | Path, strict: bool = True) -> list[Case]:
    """One case per image of ``benign/`` then ``malignant/`` (naturally sorted).

    Raises:
        FileNotFoundError: naming ``root`` when no ``benign``/``malignant`` folders are found, and
            (``strict``) an image without ``<stem>_mask.png`` or a mask without its image.
    """
    folder = common.find_dataset_dir(root, _is_root, "BUSI folders benign/ and malignant/ (Dataset_BUSI_with_GT)")
    cases = []
    for category in CATEGORIES:
        sub = common.child_dir(folder, category)
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in common.list_dir(sub, dirs=False):
            if p.suffix.lower() != ".png":
                continue
            m = _MASK.match(p.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append((int(m.group("k") or 0), p))
            else:
                images[p.stem] = p
        for stem in sorted(set(images) | set(masks), key=common.natural_key):
            image = images.get(stem)
            if image is None:
                image = sub / f"{stem}.png"
                if strict:
                    raise FileNotFoundError(f"missing file: {image} (its mask {masks[stem][0][1].name} exists)")
            found = [p for _, p in sorted(masks.get(stem, []), key=lambda t: t[0])]
            if not found:
                expected = sub / f"{stem}_mask.png"
                if strict:
                    raise FileNotFoundError(f"missing file: {expected} (the mask of {image.name})")
                found = [expected]
            extra = {"category": category, "masks": [str(p) for p in found]}
            cases.append(Case(id=stem, subject=stem, images=(str(image),), label=str(found[0]), extra=extra))
    return cases


def _open(path: str, problems: list[str]) -> np.ndarray | None:
    from PIL import Image

    if not Path(path).is_file():
        problems.append(f"missing file: {path}")
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"))
    except Exception as e:  # PIL raises many types for a truncated or non-image file
        problems.append(f"unreadable or corrupt file: {path} ({type(e).__name__}: {e})")
        return None


def check_mask_values(mask: np.ndarray, path: str) -> list[str]:
    """Problems with the values of a grey-level mask: anything but background 0 and at most one foreground value.

    The release's masks are 0/255; re-distributed copies (and independent look-alikes) carry 0/1 or RGB masks (one
    colour, hence one grey level). Every such mask binarises to ``mask > 0`` without ambiguity; several foreground
    levels (an anti-aliased, resampled or JPEG-compressed mask) do not, and are reported.
    """
    values = np.unique(np.asarray(mask))
    foreground = values[values != 0]
    if foreground.size > 1:
        shown = foreground[:8].tolist()
        more = "" if foreground.size <= 8 else f" ... ({foreground.size} values)"
        return [f"mask values other than 0 and one foreground value in {path}: {shown}{more}"]
    return []


def check_case(case: Case) -> list[str]:
    """Problems of one image: missing/unreadable files, a mask of another size than its image, a mask with more
    than one foreground value (:func:`check_mask_values`)."""
    problems: list[str] = []
    image = _open(case.images[0], problems)
    for path in case.extra.get("masks", [case.label] if case.label else []):
        mask = _open(path, problems)
        if mask is None:
            continue
        if image is not None and mask.shape != image.shape:
            problems.append(
                f"shape mismatch: {path} is {mask.shape[::-1]} (width, height) but {case.images[0]} is {image.shape[::-1]}"
            )
        problems.extend(check_mask_values(mask, path))
    if case.label is None:
        problems.append(f"no mask file for case {case.id}")
    return problems


def make_split(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """445/65/137 of the 647 benign and malignant images, the same fractions otherwise."""
    return common.seeded_split(case_ids, SPLIT_COUNTS, seed)


def datalist(root: str | Path, split: Any = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """MONAI datalist: ``image`` (the PNG), ``label`` (its ``_mask.png``), ``masks`` (every mask file, to be
    united), ``case``, ``subject``, ``category``; load with :class:`LoadBUSId`."""
    return common.build_datalist(find_cases(root), split, make_split, seed)


def _reader():
    from monai.data import PILReader

    return PILReader(converter=lambda im: im.convert("L"))


def read_image(path: str):
    """A BUSI image as a grey-level ``MetaTensor`` ``(1, W, H)`` (float32, 0-255)."""
    from monai.transforms import LoadImage

    img = LoadImage(reader=_reader(), image_only=True, ensure_channel_first=True, dtype=np.float32)(path)
    return img


def read_mask(paths: Sequence[str] | str):
    """The union of BUSI mask files as a ``MetaTensor`` ``(1, W, H)`` of 0/1 (uint8)."""
    from monai.transforms import LoadImage

    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    if not paths:
        raise ValueError("no mask file given")
    load = LoadImage(reader=_reader(), image_only=True, ensure_channel_first=True)
    out = None
    for p in paths:
        m = load(p)
        if out is not None and tuple(m.shape) != tuple(out.shape):
            raise ValueError(
                f"shape mismatch: mask {p} is {tuple(m.shape[1:])} but {paths[0]} is {tuple(out.shape[1:])}"
            )
        out = m > 0 if out is None else (out | (m > 0))
    return out.to(dtype=torch.uint8)


class LoadBUSId(MapTransform):
    """Load a BUSI datalist entry: ``image_key`` -> grey level ``(1, W, H)`` float32, ``label_key`` -> the
    union of the files listed in ``masks_key`` (or the ``label_key`` file alone) as 0/1 ``(1, W, H)``;
    ``masks_key`` is removed (its lists differ in length between images and would not collate)."""

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        image_key: str = "image",
        label_key: str = "label",
        masks_key: str = "masks",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key, self.masks_key = image_key, label_key, masks_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if key == self.label_key:
                # the list of mask files goes: lists of different lengths would not collate into a batch
                paths = d.pop(self.masks_key, None) or [d[key]]
                d[key] = read_mask(paths)
            else:
                d[key] = read_image(d[key])
        return d


def preprocessing(size: int = 256, keys: Sequence[str] = ("image", "label")) -> list:
    """Transforms from a datalist entry to network input: :class:`LoadBUSId`, resize to ``size x size``
    (bilinear for the image, nearest for the mask), intensities scaled to [0, 1]."""
    from monai.transforms import Resized, ScaleIntensityd

    image_key, label_key = keys
    return [
        LoadBUSId(keys, image_key=image_key, label_key=label_key),
        Resized(keys, spatial_size=(size, size), mode=("bilinear", "nearest")),
        ScaleIntensityd(image_key, minv=0.0, maxv=1.0),
    ]
