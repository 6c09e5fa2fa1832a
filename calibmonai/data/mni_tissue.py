"""The embedded default task: brain-tissue segmentation (background, CSF, GM, WM) built from the MNI152 2009a
template and its grey/white-matter probability maps shipped inside the ``nilearn`` wheel (no download).

Each subject is the template after a seeded random affine + elastic warp (applied identically to the image
and the probability maps), a bias field, a gamma change and Gaussian noise (MONAI random transforms), at
2 mm. Labels are the argmax of the warped 4-class soft reference, which is also written, so predicted
probabilities can be compared with true tissue probabilities.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

__all__ = [
    "CLASS_NAMES", "template_files", "prepare_mni_tissue", "load_datalist", "check_datalist", "soft_reference",
    "rater_labels", "smooth_displacement",
]

CLASS_NAMES = ("background", "CSF", "GM", "WM")
_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
_VERSION = 1


def template_files() -> dict[str, Path]:
    """Paths of the T1, GM and WM files inside the installed ``nilearn`` package."""
    try:
        import nilearn
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the embedded MNI tissue task needs the 'nilearn' package (it ships the MNI152 template): "
            "pip install 'calibmonai[demo]'"
        ) from e
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = {k: folder / v for k, v in _FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the installed nilearn lacks the MNI152 2009a template files: {missing}")
    return paths


def soft_reference(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """4-class reference probabilities ``(4, *spatial)`` (background, CSF, GM, WM) that sum to 1.

    Outside the brain mask: background = 1. Inside: CSF = clip(1 - gm - wm, 0, 1), with gm/wm in [0, 1],
    then normalised.
    """
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain
    inside = np.stack([np.zeros_like(gm), csf, gm, wm])
    total = inside.sum(0, keepdims=True)
    inside = np.where(total > 0, inside / np.maximum(total, 1e-8), 0.0)
    bg = 1.0 - brain
    out = inside * brain[None] + np.concatenate([bg[None], np.zeros((3,) + bg.shape)]) * 1.0
    return (out / out.sum(0, keepdims=True)).astype(np.float32)


def _load_template(spacing: float) -> tuple[torch.Tensor, np.ndarray]:
    """Template as a ``(4, X, Y, Z)`` tensor [t1, gm, wm, brain] resampled to ``spacing`` mm, and its affine."""
    from monai.transforms import Spacing

    paths = template_files()
    imgs = {k: nib.load(str(p)) for k, p in paths.items()}
    affine = imgs["t1"].affine
    t1 = imgs["t1"].get_fdata(dtype=np.float32)
    gm = imgs["gm"].get_fdata(dtype=np.float32) / 255.0
    wm = imgs["wm"].get_fdata(dtype=np.float32) / 255.0
    brain = (t1 > 0).astype(np.float32)
    from monai.data import MetaTensor

    stack = MetaTensor(torch.from_numpy(np.stack([t1, gm, wm, brain])), affine=torch.as_tensor(affine))
    resampled = Spacing(pixdim=(spacing,) * 3, mode="bilinear")(stack)
    return resampled.as_tensor(), resampled.affine.numpy()


def _subject(template: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject: (image, 4-class soft reference)."""
    from monai.transforms import (
        Rand3DElastic,
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
    )

    warp = Rand3DElastic(
        sigma_range=(6, 8), magnitude_range=(40, 80), prob=1.0, rotate_range=(0.15, 0.15, 0.15),
        scale_range=(0.08, 0.08, 0.08), translate_range=(3, 3, 3), padding_mode="zeros", mode="bilinear",
    )  # fmt: skip
    warp.set_random_state(seed)
    warped = warp(template)  # one warp for image and maps alike
    warped = torch.as_tensor(np.asarray(warped)).float()
    t1, gm, wm, brain = warped[0:1], warped[1].numpy(), warped[2].numpy(), warped[3].numpy()
    brain = (brain > 0.5).astype(np.float32)
    image = t1 / 255.0
    for i, tr in enumerate(
        (RandBiasField(coeff_range=(0.2, 0.4), prob=1.0), RandAdjustContrast(gamma=(0.7, 1.5), prob=1.0),
         RandGaussianNoise(std=0.03, prob=1.0))  # fmt: skip
    ):
        tr.set_random_state(seed * 7 + i)
        image = torch.as_tensor(np.asarray(tr(image))).float()
    image = image.clamp_min(0) * torch.from_numpy(brain)[None]  # skull-stripped like the template
    return image[0].numpy().astype(np.float32), soft_reference(gm, wm, brain)


def smooth_displacement(shape: Sequence[int], shift: float, smoothness: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field ``(3, *shape)`` in voxels: white noise per axis, Gaussian-smoothed with
    standard deviation ``smoothness`` voxels, then scaled so each component has standard deviation ``shift`` voxels.
    """
    from scipy.ndimage import gaussian_filter

    if shift < 0 or smoothness <= 0:
        raise ValueError(f"label noise needs shift >= 0 and smoothness > 0 (voxels), got shift={shift}, smoothness={smoothness}.")
    field = np.stack([gaussian_filter(rng.standard_normal(tuple(shape)), smoothness, mode="wrap") for _ in range(3)])
    field /= np.maximum(field.reshape(3, -1).std(1), 1e-12)[:, None, None, None]
    return (field * shift).astype(np.float32)


def rater_labels(ref: np.ndarray, shift: float, smoothness: float, rng: np.random.Generator) -> np.ndarray:
    """Labels a rater with spatially correlated boundary disagreement would draw: the soft reference ``(4, *spatial)``
    warped by a :func:`smooth_displacement` (``shift``, ``smoothness`` in voxels; linear interpolation), then the
    argmax. Each boundary moves by a locally coherent amount, as in the inter-rater variability of manual tissue
    delineations (e.g. Warfield et al., STAPLE, IEEE TMI 2004), rather than voxels flipping independently.
    """
    from scipy.ndimage import map_coordinates

    if ref.ndim != 4:
        raise ValueError(f"soft reference must be (classes, X, Y, Z), got shape {ref.shape}.")
    shape = ref.shape[1:]
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    coords += smooth_displacement(shape, shift, smoothness, rng)
    warped = np.stack([map_coordinates(c, coords, order=1, mode="nearest") for c in ref])
    return warped.argmax(0).astype(np.uint8)


def _label_noise_settings(label_noise: Mapping[str, Any] | None) -> dict[str, float] | None:
    if label_noise is None:
        return None
    unknown = set(label_noise) - {"shift_mm", "smoothness_mm"}
    if unknown or "shift_mm" not in label_noise:
        raise ValueError(
            f"label_noise takes 'shift_mm' (standard deviation of the boundary shift) and optionally 'smoothness_mm' "
            f"(correlation length, default 8), got {dict(label_noise)}."
        )
    out = {"shift_mm": float(label_noise["shift_mm"]), "smoothness_mm": float(label_noise.get("smoothness_mm", 8.0))}
    if out["shift_mm"] < 0 or out["smoothness_mm"] <= 0:
        raise ValueError(f"label_noise needs shift_mm >= 0 and smoothness_mm > 0, got {out}.")
    return out


def prepare_mni_tissue(
    out_dir: str | os.PathLike,
    num_subjects: int = 24,
    split: Sequence[int] = (16, 4, 4),
    seed: int = 0,
    spacing: float = 2.0,
    progress: bool = True,
    label_noise: Mapping[str, Any] | None = None,
) -> Path:
    """Write the embedded task to ``out_dir`` and return the path of its ``datalist.json``.

    Files: ``images/sub-XXX_T1w.nii.gz``, ``labels/sub-XXX_seg.nii.gz`` (0 background, 1 CSF, 2 GM, 3 WM),
    ``probs/sub-XXX_probs.nii.gz`` (4D soft reference), and a MONAI datalist with ``training``,
    ``validation`` and ``test`` splits at subject level. Same seed and settings give the same files.
    An existing prepared folder with the same settings is reused untouched; one prepared with other settings
    raises an error rather than being overwritten.

    ``label_noise={"shift_mm": s, "smoothness_mm": l}`` simulates a rater: the *training* subjects' labels are
    :func:`rater_labels` (boundaries moved by a smooth random displacement of standard deviation ``s`` mm per axis
    and correlation length ``l`` mm, seeded per subject) written to ``rater_labels/``, and their training entries
    point there (``clean_label`` keeps the clean one); validation and test labels stay the clean argmax.
    """
    out = Path(out_dir)
    settings: dict[str, Any] = {"version": _VERSION, "num_subjects": num_subjects, "split": list(split), "seed": seed, "spacing": spacing}
    noise = _label_noise_settings(label_noise)
    if noise is not None:
        settings["label_noise"] = noise  # default settings (and their stamp) unchanged
    if sum(split) != num_subjects or len(split) != 3 or min(split) < 1:
        raise ValueError(f"split must be three positive counts summing to num_subjects={num_subjects}, got {list(split)}.")
    datalist = out / "datalist.json"
    stamp = out / "prepare.json"
    if datalist.is_file() and stamp.is_file():
        existing = json.loads(stamp.read_text())
        if existing != settings:
            raise ValueError(
                f"{out} already holds a prepared task with settings {existing}, not {settings}; "
                "choose another folder (existing data is never overwritten)."
            )
        if progress:
            print(f"[prepare] reusing {out} ({num_subjects} subjects)")
        return datalist
    if out.exists() and any(out.iterdir()) and not stamp.is_file():
        raise ValueError(f"{out} exists and is not a prepared calibmonai task folder; choose an empty or new folder.")
    for sub in ("images", "labels", "probs") + (("rater_labels",) if noise else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    template, affine = _load_template(spacing)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_subjects)
    n_tr, n_va, _ = split
    training = set(int(k) for k in order[:n_tr])
    entries = []
    for i in range(num_subjects):
        sid = f"sub-{i:03d}"
        image, ref = _subject(template, seed * 100_003 + i)
        label = ref.argmax(0).astype(np.uint8)
        files = {
            "image": f"images/{sid}_T1w.nii.gz",
            "label": f"labels/{sid}_seg.nii.gz",
            "probs": f"probs/{sid}_probs.nii.gz",
        }
        nib.save(nib.Nifti1Image(image, affine), str(out / files["image"]))
        nib.save(nib.Nifti1Image(label, affine), str(out / files["label"]))
        nib.save(nib.Nifti1Image(np.moveaxis(ref, 0, -1), affine), str(out / files["probs"]))
        if noise is not None and i in training:
            noisy = rater_labels(
                ref, noise["shift_mm"] / spacing, noise["smoothness_mm"] / spacing, np.random.default_rng([seed, i, 1729])
            )
            files = {**files, "label": f"rater_labels/{sid}_seg.nii.gz", "clean_label": files["label"]}
            nib.save(nib.Nifti1Image(noisy, affine), str(out / files["label"]))
        entries.append({"subject": sid, **files})
        if progress:
            print(f"[prepare] subject {i + 1}/{num_subjects} written ({sid}, shape {label.shape})", flush=True)
    lists = {
        "training": [entries[k] for k in sorted(order[:n_tr])],
        "validation": [entries[k] for k in sorted(order[n_tr : n_tr + n_va])],
        "test": [entries[k] for k in sorted(order[n_tr + n_va :])],
        "labels": dict(enumerate(CLASS_NAMES)),
    }
    datalist.write_text(json.dumps(lists, indent=2))
    stamp.write_text(json.dumps(settings, indent=2))
    return datalist


def load_datalist(
    dataset_dir: str | os.PathLike, split: str, prepare: bool = False, prepare_if_default: str | os.PathLike | None = None,
    prepare_settings: Mapping[str, Any] | None = None, num_classes: int | None = 4, **prepare_kwargs: Any,
) -> list[dict[str, str]]:
    """Read one split of ``dataset_dir/datalist.json`` with absolute file paths, checking every file exists and
    (``num_classes``) that each case's image and label are readable NIfTI files on the same grid with label values in
    ``0 .. num_classes - 1`` (:func:`calibmonai.datasets.common.check_nifti_case`; a case that passed is not read
    again in this process), so that a damaged or hand-made datalist stops with the file named before training
    instead of failing (or, for a label on another grid, training silently) inside the loader.

    Args:
        dataset_dir: folder holding ``datalist.json``.
        split: ``training``, ``validation`` or ``test``.
        prepare: prepare the embedded MNI task in ``dataset_dir`` when that folder does not exist or is empty.
        prepare_if_default: the embedded task's own default folder (the bundles pass theirs): the task is prepared
            automatically only when ``dataset_dir`` *is* that folder and it does not exist or is empty. Any other
            folder without a datalist is an error and nothing is created in it (a mistyped ``--dataset_dir`` or a
            user's own data folder is never written into).
        prepare_settings: arguments of :func:`prepare_mni_tissue` (``num_subjects``, ``split``, ``label_noise``...)
            as one mapping (a bundle profile's ``prepare_kwargs``); ``prepare_kwargs`` are added to them.

    Raises:
        FileNotFoundError: a missing folder, datalist or data file, naming it.
        ValueError: an unknown split, naming the available ones.
    """
    root = Path(dataset_dir)
    datalist = root / "datalist.json"
    if not datalist.is_file():
        allowed = prepare or (
            prepare_if_default is not None and os.path.abspath(root) == os.path.abspath(Path(prepare_if_default))
        )
        if allowed and (not root.exists() or (root.is_dir() and not any(root.iterdir()))):
            prepare_mni_tissue(root, **{**dict(prepare_settings or {}), **prepare_kwargs})
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (prepare it with `calibmonai prepare --out {root}`).")
    if not datalist.is_file():
        raise FileNotFoundError(f"no datalist.json in data folder {root}: prepare it with `calibmonai prepare --out {root}`.")
    content = _read_datalist(datalist)
    splits = [k for k, v in content.items() if isinstance(v, list)]
    if split not in splits:
        raise ValueError(f"split {split!r} not in {datalist}; available splits: {splits}.")
    items = []
    missing = []
    for k, entry in enumerate(content[split]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            shown = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(
                f"entry {k} of the {split!r} split of {datalist} must be an object with an \"image\" and a \"label\" file "
                f"path, got {shown}."
            )
        item = dict(entry)
        for key in ("image", "label", "probs", "clean_label"):
            if key in item:
                path = Path(item[key])
                item[key] = str(path if path.is_absolute() else root / path)
                if not Path(item[key]).is_file():
                    missing.append(item[key])
        items.append(item)
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) named in {datalist} ({split}) do not exist, e.g. {missing[:3]}")
    if not items:
        raise ValueError(f"split {split!r} of {datalist} is empty.")
    if num_classes is not None:
        _check_items(items, root, split, int(num_classes))
    return items


def _check_items(items: list[dict[str, str]], root: Path, split: str, num_classes: int) -> None:
    """Raise ``ValueError`` with the problems of every case of ``items`` that is not a readable image and label
    on one grid with labels in ``0 .. num_classes - 1``."""
    from calibmonai.datasets.common import format_report

    report = _check_report(items, root, num_classes)
    if not report.ok:
        raise ValueError(f"the {split} split of {root / 'datalist.json'} has cases that cannot be used:\n{format_report(report)}")


def _check_report(items: list[dict[str, str]], root: Path, num_classes: int) -> Any:
    """:class:`calibmonai.datasets.common.CheckReport` of datalist ``items`` (cases named by subject)."""
    import types

    from calibmonai.datasets.common import Case, check_nifti_case
    from calibmonai.datasets.pipelines import check_cases

    module = types.SimpleNamespace(NAME="mni_tissue", check_case=lambda case: check_nifti_case(case, range(num_classes)))
    cases = [Case(str(it.get("subject") or Path(it["image"]).name), str(it.get("subject") or ""), (it["image"],), it.get("label")) for it in items]
    return check_cases(module, cases, root)


def _read_datalist(datalist: Path) -> dict[str, Any]:
    """The JSON object of ``datalist``, or a ``ValueError`` naming the file (invalid JSON, or not an object)."""
    try:
        content = json.loads(datalist.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{datalist} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{datalist} is not a text (JSON) file: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"{datalist} must hold a JSON object of splits ({{\"training\": [...], ...}}), got a {type(content).__name__}.")
    return content


def check_datalist(dataset_dir: str | os.PathLike, num_classes: int = 4) -> Any:
    """Check every case of every split of ``dataset_dir/datalist.json`` (what ``calibmonai check-data --bundle
    mni_tissue_seg2d`` runs): files present and readable, image and label on one grid, labels in
    ``0 .. num_classes - 1``. Never raises for a bad folder: a datalist that cannot be read is ``report.error``."""
    from calibmonai.datasets.common import CheckReport

    root = Path(dataset_dir)
    items: list[dict[str, str]] = []
    try:
        if not (root / "datalist.json").is_file():
            raise FileNotFoundError(
                f"no datalist.json in {root}: prepare the embedded task with `calibmonai prepare --out {root}`, or, for a "
                f"public dataset's download, give its bundle (--bundle acdc_seg2d, brats19_seg2d, ...)."
            )
        splits = [k for k, v in _read_datalist(root / "datalist.json").items() if isinstance(v, list)]
        for split in splits:
            items += load_datalist(root, split, num_classes=None)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        report = CheckReport(dataset="mni_tissue", root=str(root))
        report.error = str(e)
        return report
    return _check_report(items, root, num_classes)
