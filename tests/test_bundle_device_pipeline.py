"""The embedded bundle's training data pipeline follows MONAI's fast-training recipe: deterministic transforms cached
once, the cached volumes moved to ``cache_device`` (ToDeviced after the cache-able transforms), random crops and
flips there without MetaTensor bookkeeping and without a deep copy of the cache, a ThreadDataLoader. On the CPU
the pipeline gives the same batches as MONAI's defaults and the plain DataLoader."""

import logging
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.handlers import from_engine
from monai.data import CacheDataset, DataLoader, MetaTensor, ThreadDataLoader, get_track_meta
from monai.transforms import Compose, FgBgToIndicesd, Randomizable, ToDeviced

from calibmonai.bundle_tools import REPO_BUNDLES, config_files
from calibmonai.data import prepare_mni_tissue
from calibmonai.fast_training import UntrackedRandomCompose
from calibmonai.handlers import EpochLossLogger, UndecollatedOutput

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
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def _batches(parser: ConfigParser, loader_cls=DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    parser.get_parsed_content("initialize")
    ds = parser.get_parsed_content("train#dataset")
    kwargs = dict(batch_size=parser.get_parsed_content("train#dataloader#batch_size"), sampler=parser.get_parsed_content("train#sampler"), num_workers=0)
    return [(b["image"], b["label"]) for b in loader_cls(ds, **kwargs)]


def test_untracked_uncopied_random_part_gives_monai_defaults_values_as_plain_tensors(cohort, tmp_path):
    """The bundle's UntrackedRandomCompose + copy_cache false against MONAI's defaults (a plain Compose, a deep copy
    of the cached item at every access, MetaTensors): the same numbers in every batch, and the cache untouched."""
    fast = _parser(cohort, tmp_path, volume_repeats=6)
    reference = _parser(cohort, tmp_path / "ref", volume_repeats=6, **{"train#preprocessing#_target_": "Compose", "train#dataset#copy_cache": True})
    assert isinstance(fast.get_parsed_content("train#preprocessing"), UntrackedRandomCompose)
    assert type(reference.get_parsed_content("train#preprocessing")) is Compose
    dataset = fast.get_parsed_content("train#dataset")
    assert dataset.copy_cache is False
    before = [{k: torch.as_tensor(v).clone() for k, v in item.items() if isinstance(v, torch.Tensor)} for item in dataset._cache]
    got, want = _batches(fast), _batches(reference)
    assert len(got) == len(want) == 3  # 6 visits of the one training volume, 2 volumes a batch
    for (x, y), (xr, yr) in zip(got, want):
        assert type(x) is torch.Tensor and type(y) is torch.Tensor  # no MetaTensor bookkeeping in the random part
        assert isinstance(xr, MetaTensor) and isinstance(yr, MetaTensor)
        torch.testing.assert_close(x, xr.as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(y, yr.as_tensor(), rtol=0, atol=0)
    assert len({float(x.sum()) for x, _ in got}) > 1  # different slices in different batches
    for item, old in zip(dataset._cache, before):  # the random transforms never wrote into the cache
        assert isinstance(item["image"], MetaTensor)  # the cached volumes keep their metadata
        for k, v in old.items():
            torch.testing.assert_close(torch.as_tensor(item[k]), v, rtol=0, atol=0)
    assert get_track_meta()


def test_epoch_loss_logger_reads_device_losses_once_per_epoch(caplog):
    """The mean loss of the epoch, hand-computed, with no host read of any iteration's loss (a GPU would
    synchronise at each): the logger reads its sum once, at the end of the epoch."""
    reads = []

    class Watched(torch.Tensor):
        def item(self):
            reads.append("item")
            return super().item()

        def __float__(self):
            reads.append("float")
            return super().__float__()

    class Engine:
        state = type("State", (), {"epoch": 1, "max_epochs": 1, "output": None})()

    engine = Engine()
    logger = EpochLossLogger()
    logger._reset(engine)
    for i, value in enumerate((0.5, 0.25, 2.0)):
        loss = torch.tensor(value, requires_grad=True).as_subclass(Watched)
        engine.state.output = [{"loss": loss, "pred": None}] if i % 2 else {"loss": loss}  # decollated or not
        logger._accumulate(engine)
    assert reads == [] and logger._count == 3
    with caplog.at_level(logging.INFO, logger="calibmonai"):
        logger._log(engine)
    assert reads == ["float"]
    assert "mean training loss 0.9167 over 3 iteration(s)" in caplog.text  # (0.5 + 0.25 + 2.0) / 3


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
    assert trainer.state.epoch == 1 and torch.isfinite(torch.as_tensor(from_engine(["loss"], first=True)(trainer.state.output)))


@pytest.mark.parametrize("bundle", sorted(p.parent.parent.name for p in REPO_BUNDLES.glob("*/configs/train.yaml")))
def test_every_bundle_trains_from_a_thread_data_loader_and_untracked_sampling(bundle):
    parser = ConfigParser()
    parser.read_config(str(REPO_BUNDLES / bundle / "configs" / "train.yaml"))
    assert parser["train"]["dataloader"]["_target_"] == "ThreadDataLoader"
    assert parser["train"]["dataloader"]["dataset"] == "@train#dataset"
    # and its random sampling runs without MetaTensor bookkeeping (the end-to-end runs of tests/test_*bundles.py
    # train each one through it)
    assert parser["train"]["preprocessing"]["_target_"] == "calibmonai.fast_training.UntrackedRandomCompose"
    # its trainer does not decollate each batch (which reads the loss back to the host every iteration), and its
    # output is the one-item list that MONAI's from_engine(['loss'], first=True) reads
    assert parser["train"]["trainer"]["decollate"] is False
    assert parser["train"]["handlers"][-1]["_target_"] == "calibmonai.handlers.UndecollatedOutput"
    transforms = [h["output_transform"] for h in parser["train"]["handlers"] if "output_transform" in h]
    assert transforms and set(transforms) == {"$from_engine(['loss'], first=True)"}


def test_undecollated_output_wraps_dicts_only():
    engine = type("E", (), {})()
    engine.state = type("S", (), {})()
    out = {"loss": torch.tensor(1.0), "pred": torch.zeros(4, 2, 3, 3)}
    engine.state.output = out
    UndecollatedOutput()(engine)
    assert engine.state.output == [out] and engine.state.output[0] is out
    decollated = [{"loss": 1.0}, {"loss": 1.0}]
    engine.state.output = decollated
    UndecollatedOutput()(engine)
    assert engine.state.output is decollated


def test_one_epoch_without_decollating_logs_the_loss(cohort, tmp_path):
    """A CPU epoch of the bundle's trainer: its output stays a dictionary, StatsHandler and the epoch logger log
    the loss through it."""
    parser = _parser(cohort, tmp_path, volume_repeats=2, **{"train#handlers#2#iteration_log": True})
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    collect = Collect(level=logging.INFO)
    loggers = [logging.getLogger(n) for n in ("monai.handlers.StatsHandler", "calibmonai")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(collect)
        lg.setLevel(logging.INFO)
    try:
        trainer.run()
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(collect)
            lg.setLevel(level)
    out = trainer.state.output
    # one item holding the whole batch (what from_engine(['loss'], first=True) reads), not one per image
    assert isinstance(out, list) and len(out) == 1 and out[0]["pred"].shape[0] == 2 * parser.get_parsed_content("slices_per_volume")
    assert torch.is_tensor(out[0]["loss"]) and out[0]["loss"].ndim == 0  # never turned into a host number
    assert from_engine(["loss"], first=True)(out) is out[0]["loss"]
    assert any("mean training loss" in line for line in lines)
    logged = [float(line.split("train_loss: ")[1].split()[0]) for line in lines if "train_loss: " in line]
    assert len(logged) == trainer.state.iteration and logged[-1] == pytest.approx(float(out[0]["loss"]), abs=1e-4)


def test_an_epoch_without_any_batch_stops_before_validation_and_checkpointing():
    """The loader gave no batch (every item failed in its threads): before, the untrained network was validated and
    saved as the best model with exit status 0; now the run stops first, whatever the handlers' order."""
    from ignite.engine import Engine, Events

    class NoBatch:  # a loader whose length is known but whose items all failed
        def __len__(self):
            return 3

        def __iter__(self):
            return iter([])

    for data, epochs, validations in ((NoBatch(), 2, []), ([1, 2, 3], 3, [1, 2, 3])):
        engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
        seen = []
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.epoch))  # ValidationHandler's place
        EpochLossLogger().attach(engine)
        if validations:
            engine.run(data, max_epochs=epochs)  # epochs 2 and 3 start on a spent iterator: not an empty epoch
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ignite's own "Data iterator can not provide data anymore"
                with pytest.raises(RuntimeError, match="epoch 1 ran no training iteration: the training data loader gave no batch"):
                    engine.run(data, max_epochs=epochs)
        assert seen == validations
