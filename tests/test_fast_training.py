"""calibmonai.fast_training: metadata tracking off for the random part of a training pipeline only, scoped and
thread-safe, with the values of a plain Compose."""

import threading

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, MapTransform, RandFlipd, RandSpatialCropd

from calibmonai.fast_training import UntrackedRandomCompose, metadata_tracking_off


class Record(MapTransform):
    """A deterministic transform that notes whether tracking is on and the type it was given."""

    def __init__(self, log: list) -> None:
        super().__init__(keys="image")
        self.log = log

    def __call__(self, data):
        self.log.append((get_track_meta(), type(data["image"]).__name__))
        return data


def _item(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    img = MetaTensor(torch.as_tensor(rng.random((6, 7, 5)), dtype=torch.float32), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    return {"image": img}


def test_tracking_off_is_scoped_nested_and_restored_after_errors():
    assert get_track_meta()
    with metadata_tracking_off():
        assert not get_track_meta()
        with metadata_tracking_off():
            assert not get_track_meta()
        assert not get_track_meta()  # the inner block does not switch it back on under the outer one
    assert get_track_meta()
    with pytest.raises(RuntimeError, match="boom"):
        with metadata_tracking_off():
            raise RuntimeError("boom")
    assert get_track_meta()


def test_tracking_off_from_two_threads_restores_only_after_both():
    inside, release, seen = threading.Event(), threading.Event(), []

    def worker():
        with metadata_tracking_off():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    with metadata_tracking_off():
        pass  # this thread's block ends while the worker's is still open
    seen.append(get_track_meta())
    release.set()
    t.join(10)
    assert seen == [False] and get_track_meta()


def test_random_part_untracked_deterministic_part_tracked_values_equal():
    log: list = []
    transforms = [EnsureChannelFirstd("image", channel_dim="no_channel"), Record(log),
                  RandSpatialCropd("image", roi_size=(4, 5, 3), random_size=False), Record(log), RandFlipd("image", prob=0.5, spatial_axis=0)]  # fmt: skip
    fast, plain = UntrackedRandomCompose(transforms), Compose(list(transforms))
    outs = []
    for composed in (fast, plain):
        composed.set_random_state(seed=3)
        outs.append([composed(_item(i))["image"] for i in range(6)])
    # the deterministic part saw tracking on and MetaTensors, the random part plain tensors with tracking off
    assert log[:2] == [(True, "MetaTensor"), (False, "Tensor")]
    assert log[12:14] == [(True, "MetaTensor"), (True, "MetaTensor")]  # the plain Compose, for comparison
    for a, b in zip(*outs):
        assert type(a) is torch.Tensor and isinstance(b, MetaTensor) and a.shape == (1, 4, 5, 3)
        torch.testing.assert_close(a, b.as_tensor(), rtol=0, atol=0)
    assert len({float(a.sum()) for a in outs[0]}) > 1
    assert get_track_meta()


def test_partial_runs_as_cache_datasets_call_them():
    log: list = []
    fast = UntrackedRandomCompose([Record(log), RandFlipd("image", prob=1.0, spatial_axis=0), Record(log)])
    cached = fast(_item(), end=1)  # what CacheDataset caches: up to the first random transform
    assert isinstance(cached["image"], MetaTensor) and log == [(True, "MetaTensor")]
    out = fast(cached, start=1)  # what it runs at each access
    assert log[1:] == [(False, "Tensor")] and type(out["image"]) is torch.Tensor
    torch.testing.assert_close(out["image"], torch.flip(_item()["image"].as_tensor(), dims=(1,)), rtol=0, atol=0)  # channel first: spatial axis 0 is dim 1
    log.clear()
    only_fixed = UntrackedRandomCompose([Record(log)])  # no random transform: everything tracked
    assert isinstance(only_fixed(_item())["image"], MetaTensor) and log == [(True, "MetaTensor")]
