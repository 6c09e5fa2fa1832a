"""What MONAI's fast-training recipe needs beyond MONAI's own classes: random training transforms without the cost
of metadata tracking, scoped to them.

MONAI's fast-training tutorial (``fast_training_tutorial.ipynb``) turns metadata tracking off for the whole process
(``monai.data.set_track_meta(False)``) once the training data are cached, because every operation on a
``MetaTensor`` also copies and updates its metadata (affine, applied operations): on the embedded bundle the random
slice sampling of one cached volume takes 6.9 ms with tracking and 1.9 ms without, on the CPU that also drives the
GPU. Switching it off for the process breaks what still needs metadata in the same process (validation's
``EnsureChannelFirstd`` and inversion, evaluation, inference). :class:`UntrackedRandomCompose` switches it off only
while its random part runs (from its first random transform on, the part ``CacheDataset`` and
``PersistentDataset`` run at every access), and :func:`metadata_tracking_off` is the scoped, thread-safe switch
beneath it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandomizableTrait, Transform

__all__ = ["metadata_tracking_off", "UntrackedRandomCompose"]

_LOCK = threading.Lock()
_STATE = {"depth": 0, "saved": True}


@contextmanager
def metadata_tracking_off() -> Iterator[None]:
    """MONAI's metadata tracking off inside the block (``set_track_meta(False)``), restored when the last of
    the blocks open in any thread ends: nested and concurrent blocks (a ``ThreadDataLoader``'s thread beside
    another loader's) never restore it under each other. The flag itself is MONAI's, global to the process."""
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["saved"] = get_track_meta()
            set_track_meta(False)
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                set_track_meta(_STATE["saved"])


def _is_random(t: Any) -> bool:
    # the test CacheDataset and PersistentDataset use to find where their cache stops
    return isinstance(t, RandomizableTrait) or not isinstance(t, Transform)


class UntrackedRandomCompose(Compose):
    """A ``monai.transforms.Compose`` whose transforms from the first random one on run with metadata tracking off
    (:func:`metadata_tracking_off`): they take and give plain ``torch.Tensor`` s. The deterministic transforms
    before it (loading, orientation, normalisation: what a ``CacheDataset`` caches) keep their metadata.

    For training pipelines whose random part needs no metadata (random crops, flips, intensity changes) and whose
    batches go straight to the network. The values are those of a plain ``Compose`` with the same transforms and
    random states (the random part does the same arithmetic on the same numbers); only the types differ. Takes
    ``Compose`` 's arguments.
    """

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None) -> Any:
        stop = len(self.transforms) if end is None else end
        first = self.get_index_of_first(_is_random)
        if first is None or first >= stop:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        if start < first:
            input_ = super().__call__(input_, start=start, end=first, threading=threading, lazy=lazy)
            start = first
        with metadata_tracking_off():
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
