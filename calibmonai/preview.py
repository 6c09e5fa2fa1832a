"""Quick-look PNGs of inference outputs: the scan, the segmentation, the calibrated confidence and the uncertainty.

``calibmonai infer`` writes NIfTI maps (``<case>_seg``, ``_conf``, ``_uncertainty``) for a viewer; a reader who wants
to see at a glance where the network is unsure gets ``<case>_preview.png`` beside them (``calibmonai infer ...
--preview true``, or ``calibmonai preview OUTPUT --input SCANS`` on an existing output folder): one row per view
(axial, coronal, sagittal through the centre of the segmented foreground; one row for a 2D scan), four columns
(scan, segmentation over it, confidence = max_k p_k, uncertainty = entropy / log C), each map on its fixed [0, 1]
scale so that previews of different scans and runs compare. Volumes are shown in RAS orientation (nibabel's closest
canonical; the patient's left on the left of each panel, anterior/superior up), whatever the files' orientation.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from calibmonai.run_files import atomic_file

__all__ = ["PREVIEW_SUFFIX", "bundle_scans", "find_outputs", "preview_panels", "write_preview", "preview_folder"]

PREVIEW_SUFFIX = "_preview.png"
_MAPS = ("seg", "conf", "uncertainty")
_EXTS = (".nii.gz", ".nii")
_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def bundle_scans(files: Sequence[str], **overrides: Any) -> tuple[dict[str, str], list[str] | None]:
    """The scans a bundle's inference config reads from its ``input_dir`` (``{case: first modality's file}``, as
    its ``datalist`` names them; empty without ``input_dir``) and its ``class_names`` (``None`` where it has none)."""
    from calibmonai.bundle_tools import bundle_parser

    parser = bundle_parser(files, **overrides)
    scans = {item["case"]: item["files"][0] for item in parser.get_parsed_content("datalist")} if overrides.get("input_dir") else {}
    return scans, (list(parser.get_parsed_content("class_names")) if "class_names" in parser else None)


def find_outputs(output_dir: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """``{case: {"seg": file, "conf": file, "uncertainty": file}}`` of the inference outputs under ``output_dir``
    (its sub-folders too: ``separate_folder``), keyed by case name. Raises ``FileNotFoundError`` when the folder is
    missing or holds no ``<case>_seg`` file, and ``ValueError`` naming the case when a map beside it is missing."""
    root = Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"output folder {root} does not exist.")
    found: dict[str, dict[str, Path]] = {}
    for ext in _EXTS:
        for seg in sorted(glob.glob(os.path.join(glob.escape(str(root)), "**", f"*_seg{ext}"), recursive=True)):
            seg_path = Path(seg)
            if seg_path.name.startswith("."):  # a writer's temporary file
                continue
            case = seg_path.name[: -len(f"_seg{ext}")]
            maps = {k: seg_path.with_name(f"{case}_{k}{ext}") for k in _MAPS}
            missing = [str(p) for p in maps.values() if not p.is_file()]
            if missing:
                raise ValueError(f"case {case!r}: {', '.join(missing)} missing beside {seg_path} (run calibmonai infer again with --overwrite true).")
            found[case] = maps
    if not found:
        raise FileNotFoundError(f"no inference output (<case>_seg{_EXTS[0]} with its _conf and _uncertainty maps) in {root}: run calibmonai infer first.")
    return found


def _canonical(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Data (the first volume of a 4D file) and affine in nibabel's closest canonical (RAS) orientation."""
    img = nib.load(str(path))
    if len(img.shape) > 3:
        img = img.slicer[..., 0]
    img = nib.as_closest_canonical(img)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _scan(path: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """A scan as :func:`_canonical` gives it: NIfTI through nibabel, other volumes (``.mha``, ``.nrrd``) through MONAI's
    ``LoadImage`` (RAS affine) and reoriented the same way; a 2D picture (``.png``, ``.jpg``, ``.bmp``, ``.tif``) as
    read by ``LoadImage``, averaged over its colours, without an affine (``None``: its grid is its pixels)."""
    if str(path).lower().endswith(_EXTS):
        return _canonical(path)
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(path))
    arr, affine = np.asarray(img, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)
    if str(path).lower().endswith(_PICTURES):
        return (arr[..., :3].mean(-1) if arr.ndim == 3 and arr.shape[-1] in (3, 4) else arr), None
    img3 = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    return np.asarray(img3.dataobj, dtype=np.float32), img3.affine


def preview_panels(seg: np.ndarray, conf: np.ndarray, uncertainty: np.ndarray, image: np.ndarray | None = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The 2D panels of a preview, as displayed (``imshow(panel, origin="lower")``; ``"upper"`` for the view
    ``"picture"``): ``[(view, {"seg", "conf",
    "uncertainty"[, "image"]: 2D array})]``. Arrays in RAS order ``(x, y, z)``: axial ``[:, :, k].T``, coronal
    ``[:, j, :].T``, sagittal ``[i, :, :].T``, through the centre of the bounding box of ``seg > 0`` (of the volume
    where nothing is segmented). A volume one voxel thick gives one panel, its plane (``"plane"``); 2D maps (those of
    a 2D picture) one panel ``"picture"``, transposed the same way and shown with the first row on top."""
    arrays = {"seg": seg, "conf": conf, "uncertainty": uncertainty, **({"image": image} if image is not None else {})}
    shape = seg.shape
    for name, a in arrays.items():
        if a.shape != shape:
            raise ValueError(f"the {name} map has shape {a.shape}, the segmentation {shape}: not outputs of one scan.")
    if seg.ndim == 2:  # a 2D picture's maps (PIL's (x, y) pixel order): shown as the picture, first row on top
        return [("picture", {k: a.T for k, a in arrays.items()})]
    if seg.ndim == 3 and 1 in shape:
        plane = {k: a.reshape([n for n in shape if n != 1]) for k, a in arrays.items()}
        return [("plane", {k: a.T for k, a in plane.items()})]
    if seg.ndim != 3:
        raise ValueError(f"a preview needs 2D or 3D maps, got shape {shape}.")
    fg = np.argwhere(seg > 0)
    centre = ((fg.min(0) + fg.max(0)) // 2) if len(fg) else np.asarray(shape) // 2
    i, j, k = (int(c) for c in centre)
    return [
        ("axial", {n: a[:, :, k].T for n, a in arrays.items()}),
        ("coronal", {n: a[:, j, :].T for n, a in arrays.items()}),
        ("sagittal", {n: a[i, :, :].T for n, a in arrays.items()}),
    ]


def write_preview(
    maps: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    image_file: str | os.PathLike | None = None,
    title: str = "",
    class_names: Sequence[str] | None = None,
) -> tuple[Path, str]:
    """Write the preview PNG of one case's output ``maps`` (``{"seg", "conf", "uncertainty"}`` files); with
    ``image_file`` (the scan, its first volume for a 4D file) under the segmentation, and ``class_names`` (background
    first) in a legend of the segmentation's colours. Returns the PNG's path and a note, "" when there is nothing to
    say: why the scan is not drawn (it cannot be read, or lies on another grid than the maps: its panels stay
    empty), then, after "; ", the labels of the maps that ``class_names`` do not name."""
    out_png, scan_note, label_note = _write_preview(maps, out_png, image_file, title, class_names)
    return out_png, "; ".join(n for n in (scan_note, label_note) if n)


def _write_preview(
    maps: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    image_file: str | os.PathLike | None,
    title: str,
    class_names: Sequence[str] | None,
) -> tuple[Path, str, str]:
    """:func:`write_preview`, its two notes apart: ``(png, why the scan is not drawn, labels not named)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    data = {k: _canonical(maps[k]) for k in _MAPS}
    seg, affine = data["seg"]
    image = None
    note = ""
    if image_file is not None:
        try:
            image, image_affine = _scan(image_file)
        except Exception as e:  # noqa: BLE001 - the maps are still worth a look
            image, note = None, f"scan unreadable ({type(e).__name__})"
        else:
            same_grid = image_affine is None or (image_affine.shape == affine.shape and np.allclose(image_affine, affine, atol=1e-3))
            squeezed = tuple(n for n in seg.shape if n != 1)
            if image_affine is None and image.shape != seg.shape and tuple(n for n in image.shape if n != 1) == squeezed:
                image = image.reshape(seg.shape)  # a picture and its maps, one of them with a singleton axis
            if image.shape != seg.shape or not same_grid:
                image, note = None, "scan on another grid than the maps: not shown"
    conf, unc = data["conf"][0], data["uncertainty"][0]
    panels = preview_panels(seg, conf, unc, image)
    labels = np.rint(seg).astype(int)
    fg = labels > 0
    stats = (f"{int(fg.sum())} foreground voxels; mean confidence {float(conf[fg].mean()):.3f}, mean uncertainty "
             f"{float(unc[fg].mean()):.3f} in the foreground" if fg.any() else "nothing segmented")  # fmt: skip
    n_classes = max(int(labels.max()), len(class_names) - 1 if class_names else 0, 1)
    unnamed = sorted(int(v) for v in np.unique(labels) if class_names and v >= len(class_names))
    # maps of another bundle's classes (a --bundle that is not the one that segmented them)
    label_note = f"labels {unnamed} are no class of the bundle ({len(class_names or ())} classes): drawn unnamed; right --bundle?" if unnamed else ""
    colours = ListedColormap(plt.get_cmap("tab10")(np.arange(n_classes) % 10))
    fig, axes = plt.subplots(len(panels), 4, figsize=(13, 3.3 * len(panels) + 0.6), squeeze=False)
    for row, (view, p) in enumerate(panels):
        origin = "upper" if view == "picture" else "lower"
        under = p.get("image")
        shown = [("scan", under, "gray", None), ("segmentation", under, "gray", None),
                 ("confidence", p["conf"], "viridis", (0, 1)), ("uncertainty (entropy / log C)", p["uncertainty"], "magma", (0, 1))]  # fmt: skip
        for col, (name, arr, cmap, lim) in enumerate(shown):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if arr is None:
                ax.imshow(np.zeros_like(p["seg"]), cmap="gray", origin=origin, vmin=0, vmax=1)
                if col == 0:
                    ax.text(0.5, 0.5, note or "scan not given", color="w", ha="center", va="center", transform=ax.transAxes)
            else:
                im = ax.imshow(arr, cmap=cmap, origin=origin, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None, interpolation="nearest")
                if lim:
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            if col == 1:
                lab = np.rint(p["seg"]).astype(int)
                ax.imshow(np.ma.masked_where(lab == 0, lab - 1), cmap=colours, vmin=0, vmax=n_classes - 1, alpha=0.5, origin=origin, interpolation="nearest")
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.set_ylabel(view)
    fig.suptitle(f"{title}{': ' if title else ''}{stats}", fontsize=10)
    if class_names and len(class_names) > 1:
        from matplotlib.patches import Patch

        handles = [Patch(color=colours(c - 1), alpha=0.5, label=str(name)) for c, name in enumerate(class_names) if c > 0]
        handles += [Patch(color=colours(c - 1), alpha=0.5, label=f"label {c} (unnamed)") for c in unnamed]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if class_names and len(class_names) > 1 else 0, 1, 1))
    out_png = Path(out_png)
    try:
        with atomic_file(out_png) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return out_png, note, label_note


def preview_folder(
    output_dir: str | os.PathLike,
    scans: Mapping[str, str | os.PathLike] | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``<case>_preview.png`` beside each case's maps in ``output_dir`` (see :func:`find_outputs`); ``scans``
    maps a case name to its scan file (the first modality), shown under the segmentation; ``class_names`` label its
    colours. A case that fails is
    reported on one line and the others go on; ``RuntimeError`` at the end names the failed ones."""
    outputs = find_outputs(output_dir)
    written: list[Path] = []
    failed: dict[str, str] = {}
    for n, (case, maps) in enumerate(outputs.items(), 1):
        out_png = maps["seg"].with_name(f"{case}{PREVIEW_SUFFIX}")
        image = (scans or {}).get(case)
        try:
            _, scan_note, label_note = _write_preview(maps, out_png, image, case, class_names)
            written.append(out_png)
        except Exception as e:  # noqa: BLE001 - a damaged output file fails its case only
            failed[case] = f"{type(e).__name__}: {e}".splitlines()[0]
            if progress:
                print(f"[preview] {n}/{len(outputs)} {case}: FAILED {failed[case]}", flush=True)
            continue
        if progress:
            if image is None:
                scan_note = f"no scan of the inputs is named {case}" if scans else "no scan given"
            parts = ([f"{scan_note}: maps only"] if scan_note else []) + ([label_note] if label_note else [])
            detail = f" ({'; '.join(parts)})" if parts else ""
            print(f"[preview] {n}/{len(outputs)} {out_png}{detail}", flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} preview(s) failed: " + "; ".join(f"{c}: {w}" for c, w in failed.items()))
    return written
