"""The embedded bundle's training data pipeline follows MONAI's fast-training recipe: deterministic transforms cached
once, the cached volumes moved to ``cache_device`` (ToDeviced after the cache-able transforms), random crops and
flips there, a ThreadDataLoader. On the CPU the pipeline gives the same batches as the plain DataLoader did."""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import FgBgToIndicesd, Randomizable, ToDeviced

from calibmonai.bundle_tools import REPO_BUNDLES, config_files
from calibmonai.data import prepare_mni_tissue

BUNDLE = "mni_tissue_seg2d"
SMALL = {"slices_per_volume": 2, "batch_size": 4, "network_def#channels": [4, 8, 16, 32], "epochs": 1}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni_dev")
    prepare_mni_tissue(root, num_subjects=3, split=(1, 1, 1), seed=5, progress=False)
    return root


def _parser(cohort: Path, tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_files(BUNDLE, "ce"))
    for k, v in {**SMALL, "dataset_dir": str(cohort), "runs_dir": str(tmp_path / "runs"), **overrides}.items():
        parser[k] = v
    return parser


def test_to_device_sits_between_the_cached_and_the_random_transforms(cohort, tmp_path):
    parser = _parser(cohort, tmp_path)
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    kinds = [type(t) for t in transforms]
    i_idx, i_dev = kinds.index(FgBgToIndicesd), kinds.index(ToDeviced)
    first_random = next(i for i, t in enumerate(transforms) if isinstance(t, Randomizable))
    assert i_idx < i_dev < first_random  # the indices and the device copy are cached, the crops are not
    assert transforms[i_dev].converter.device == parser.get_parsed_content("device")
    assert isinstance(parser.get_parsed_content("train#dataloader"), ThreadDataLoader)


def test_cached_volumes_live_on_cache_device_and_batches_match_a_plain_loader(cohort, tmp_path):
    parser = _parser(cohort, tmp_path, cache_device="$torch.device('cpu')")
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, CacheDataset)
    cached = dataset._cache[0]
    assert cached["image"].device.type == "cpu" and "label_fg" in cached  # indices computed once, kept in the cache

    def batches(loader_cls):
        torch.manual_seed(0)
        p = _parser(cohort, tmp_path)
        p.get_parsed_content("initialize")
        ds = p.get_parsed_content("train#dataset")
        kwargs = dict(batch_size=p.get_parsed_content("train#dataloader#batch_size"), sampler=p.get_parsed_content("train#sampler"), num_workers=0)
        return [(b["image"].clone(), b["label"].clone()) for b in loader_cls(ds, **kwargs)]

    plain, threaded = batches(DataLoader), batches(ThreadDataLoader)
    assert len(plain) == len(threaded) > 0
    for (xa, ya), (xb, yb) in zip(plain, threaded):
        assert xa.shape == xb.shape and xa.shape[-2:] == (96, 112)
        torch.testing.assert_close(xa.as_tensor(), xb.as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(ya.as_tensor(), yb.as_tensor(), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: the cached volumes on the GPU")
def test_one_epoch_with_the_cache_on_the_gpu(cohort, tmp_path):
    parser = _parser(cohort, tmp_path, device="$torch.device('cuda')")
    parser.get_parsed_content("initialize")
    dataset = parser.get_parsed_content("train#dataset")
    assert dataset._cache[0]["image"].device.type == "cuda"
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert batch["image"].device.type == "cuda" and batch["label"].device.type == "cuda"
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.epoch == 1 and torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))


@pytest.mark.parametrize("bundle", sorted(p.parent.parent.name for p in REPO_BUNDLES.glob("*/configs/train.yaml")))
def test_every_bundle_trains_from_a_thread_data_loader(bundle):
    parser = ConfigParser()
    parser.read_config(str(REPO_BUNDLES / bundle / "configs" / "train.yaml"))
    assert parser["train"]["dataloader"]["_target_"] == "ThreadDataLoader"
    assert parser["train"]["dataloader"]["dataset"] == "@train#dataset"
