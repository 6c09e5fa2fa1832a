"""MONAI's ``ITKReader`` for the ITK-only formats (MetaImage ``.mhd``/``.mha``, NRRD ``.nrrd``/``.nhdr``) whatever
their voxel type.

ITK's Python wheels wrap images of a fixed set of pixel types; a file of another type cannot be read as it is
(``itk.imread`` raises ``TemplateTypeError``). Published data have such files: PROMISE12's reference segmentations
are ``ElementType = MET_CHAR`` (signed 8-bit), which no ITK wheel wraps. :class:`AnyPixelITKReader` reads them as
32-bit floats, which hold every 8- and 16-bit value exactly (and every label value below 2**24); files of a wrapped
type are read exactly as MONAI's ``ITKReader`` reads them.

NIfTI stays with MONAI's ``NibabelReader``: :func:`load_image` and :func:`load_imaged` register this reader in a
``LoadImage`` whose automatic choice by file suffix is kept, and :meth:`AnyPixelITKReader.verify_suffix` claims only
the ITK-only suffixes.
"""

from __future__ import annotations

from typing import Any, Sequence

from monai.config import KeysCollection, PathLike
from monai.data import ITKReader
from monai.transforms import LoadImage, LoadImaged

__all__ = ["ITK_ONLY_SUFFIXES", "AnyPixelITKReader", "load_image", "load_imaged"]

#: file suffixes read by ITK and by no other MONAI reader
ITK_ONLY_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")


def _is_unwrapped_pixel_type(error: BaseException) -> bool:
    """``itk.imread``'s error for a file whose pixel type the wheel does not wrap."""
    return type(error).__name__ == "TemplateTypeError"


class AnyPixelITKReader(ITKReader):
    """``ITKReader`` that also reads files whose pixel type ITK's Python wrapping lacks, as 32-bit floats.

    Args:
        kwargs: as for MONAI's ``ITKReader`` (``pixel_type`` given here is used for every file, as there).
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, bytes)) or not isinstance(filename, Sequence) else filename
        return all(str(n).lower().endswith(ITK_ONLY_SUFFIXES) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        try:
            return super().read(data, **kwargs)
        except Exception as e:
            if not _is_unwrapped_pixel_type(e) or "pixel_type" in {**self.kwargs, **kwargs}:
                raise
        import itk

        return super().read(data, **{**kwargs, "pixel_type": itk.F})


def load_image(**kwargs: Any) -> LoadImage:
    """MONAI ``LoadImage(**kwargs)`` that reads the ITK-only formats with :class:`AnyPixelITKReader` (every other
    file with the reader MONAI picks for it)."""
    if kwargs.get("reader") is not None:
        raise ValueError("load_image chooses the readers by file suffix; give no reader")
    loader = LoadImage(**kwargs)
    loader.register(AnyPixelITKReader())
    return loader


def load_imaged(keys: KeysCollection, **kwargs: Any) -> LoadImaged:
    """MONAI ``LoadImaged(keys, **kwargs)`` that reads the ITK-only formats with :class:`AnyPixelITKReader`."""
    if kwargs.get("reader") is not None:
        raise ValueError("load_imaged chooses the readers by file suffix; give no reader")
    loader = LoadImaged(keys, **kwargs)
    loader.register(AnyPixelITKReader())
    return loader
