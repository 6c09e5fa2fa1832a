"""Backbone fragments (bundles/backbones/): composition, the adapters of calibmonai.networks, every backbone trained
with MbLS and evaluated on the 2D bundle, and built in 3D from its fragment for training steps and a sliding window."""

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import BasicUNetPlusPlus, SwinUNETR

from calibmonai.bundle_tools import REPO_BUNDLES, backbone_names, config_files, fragment, run_name, run_workflow
from calibmonai.data import prepare_mni_tissue
from calibmonai.losses import get_loss
from calibmonai.networks import PaddedSwinUNETR, UNetPlusPlus, divisible_pad

BUNDLE = "mni_tissue_seg2d"
BACKBONES = ["attention_unet", "resunet", "swin_unetr", "unet", "unetpp", "unetr"]
# per-backbone overrides that keep each network tiny (the architecture, not the width, is under test)
TINY = {
    "unet": {"network_def#channels": [4, 8, 16, 32]},
    "resunet": {"network_def#channels": [4, 8, 16, 32, 64], "network_def#num_res_units": 1},
    "attention_unet": {"network_def#channels": [4, 8, 16, 32]},
    "unetpp": {"network_def#features": [4, 4, 8, 16, 32, 4]},
    "unetr": {"network_def#feature_size": 4, "network_def#hidden_size": 32, "network_def#mlp_dim": 64, "network_def#num_heads": 2},
    "swin_unetr": {"network_def#feature_size": 12, "network_def#num_heads": [1, 1, 1, 1], "network_def#depths": [1, 1, 1, 1]},
}
# a 4 mm cohort (50 x 59 x 48 voxels) with 48 x 48 slices keeps whole-volume validation and evaluation to seconds;
# every backbone's divisibility constraint holds at 48 (UNETR 16, ResUNet / UNet++ 16, Swin pads to 64)
SMALL = {"epochs": 1, "batch_size": 4, "slices_per_volume": 2, "volume_repeats": 1, "image_size": [48, 48]}


def _parser(files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _train_yaml() -> str:
    return config_files(BUNDLE, "mbls")[0]


# ---------------------------------------------------------------- composition


def test_every_backbone_has_a_fragment():
    assert backbone_names() == BACKBONES
    with pytest.raises(ValueError, match="available backbones: attention_unet, resunet"):
        config_files(BUNDLE, "mbls", backbone="vnet")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fragment_replaces_the_whole_network_def(backbone):
    """ConfigParser merges files by top-level key: the fragment's network_def replaces the bundle's as a whole,
    so no argument of the default UNet (num_res_units, channels, ...) reaches another network."""
    files = config_files(BUNDLE, "mbls", backbone=backbone)
    assert files[-1] == str(fragment("backbones", backbone))
    own = yaml.safe_load(Path(files[-1]).read_text())
    assert own["backbone"] == backbone
    parser = _parser(files)
    assert parser.get("network_def") == own.get("network_def", _parser([_train_yaml()]).get("network_def"))
    assert parser.get("backbone") == backbone
    assert parser.get_parsed_content("method_tag") == run_name("mbls", {"margin": 10.0, "alpha": 0.1}, backbone)
    if backbone != "unet":
        assert parser.get_parsed_content("method_tag").endswith("_" + backbone)
    # the bundle's keys are what the fragment reads
    for ref in ("@spatial_dims", "@in_channels", "@num_classes"):
        assert ref in parser.get("network_def").values(), ref


def _bundles() -> list[str]:
    return sorted(p.parent.parent.name for p in REPO_BUNDLES.glob("*/configs/train.yaml"))


@pytest.mark.parametrize("bundle", _bundles())
def test_unet_fragment_is_the_bundle_default(bundle):
    # in every bundle: the 3D bundles' own UNet (32-512, MEEP's) is not the 2D bundles' (16-128), and a study's
    # "unet" runs, which compose the fragment, share the default run's folder
    default = _parser(config_files(bundle, "mbls"))
    with_unet = _parser(config_files(bundle, "mbls", backbone="unet"))
    assert with_unet.get("network_def") == default.get("network_def")
    assert with_unet.get_parsed_content("method_tag") == default.get_parsed_content("method_tag") == "mbls_alpha0.1_margin10.0"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_bundle_composes_with_every_backbone(backbone):
    """The keys a fragment reads (spatial_dims, in_channels, num_classes, patch_size) exist in every bundle, the
    network builds with them, and the patch suits the backbone (UNETR: img_size = patch_size, multiples of 16)."""
    assert "mni_tissue_seg2d" in _bundles()
    for bundle in _bundles():
        parser = _parser(config_files(bundle, "mbls", backbone=backbone), **TINY[backbone])
        dims, patch = parser.get_parsed_content("spatial_dims"), list(parser.get_parsed_content("patch_size"))
        assert dims in (2, 3) and len(patch) == dims, (bundle, dims, patch)
        net = parser.get_parsed_content("network_def")
        assert sum(p.numel() for p in net.parameters()) > 0
        if backbone in ("unetr", "resunet", "unetpp"):
            assert all(s % 16 == 0 for s in patch), (bundle, patch)
        if backbone == "unetr":
            assert tuple(net.feat_size) == tuple(s // 16 for s in patch), bundle  # img_size is the patch


# ---------------------------------------------------------------- adapters


def test_divisible_pad_hand_computed():
    x = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7) + 1
    padded, index = divisible_pad(x, 4)
    # 5 -> 8: 1 before, 2 after; 7 -> 8: 0 before, 1 after
    assert padded.shape == (1, 1, 8, 8)
    assert index[2] == slice(1, 6) and index[3] == slice(0, 7)
    torch.testing.assert_close(padded[index], x)
    assert padded.sum() == x.sum() and padded[0, 0, 0].abs().sum() == 0 and padded[0, 0, :, 7].abs().sum() == 0
    same, index = divisible_pad(x, 1)
    assert same is x and same[index].shape == x.shape
    with pytest.raises(ValueError, match="positive integer, got 0"):
        divisible_pad(x, 0)
    with pytest.raises(ValueError, match=r"got shape \(5, 7\)"):
        divisible_pad(x[0, 0], 4)


def test_unetpp_returns_the_full_depth_output():
    kw = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": (4, 4, 8, 8, 16, 4)}
    ours, monai_net = UNetPlusPlus(**kw), BasicUNetPlusPlus(**kw)
    monai_net.load_state_dict(ours.unetpp.state_dict())
    x = torch.randn(2, 1, 32, 45)
    out = ours.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 45)
    torch.testing.assert_close(out, monai_net.eval()(x)[0])
    torch.testing.assert_close(torch.jit.script(ours)(x), out)  # exportable as TorchScript
    with pytest.raises(ValueError, match="deep_supervision=False"):
        UNetPlusPlus(**kw, deep_supervision=True)


def test_padded_swin_unetr_matches_swin_unetr():
    kw = {"in_channels": 1, "out_channels": 3, "spatial_dims": 2, "feature_size": 12, "num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}
    ours, monai_net = PaddedSwinUNETR(**kw).eval(), SwinUNETR(**kw).eval()
    monai_net.load_state_dict(ours.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 1, 64, 32)  # already multiples of 32: passed through
        torch.testing.assert_close(ours(x), monai_net(x))
        x = torch.randn(2, 1, 48, 40)  # padded to 64 x 64: rows 8..56, columns 12..52
        out = ours(x)
        assert out.shape == (2, 3, 48, 40)
        reference = monai_net(F.pad(x, (12, 12, 8, 8)))[:, :, 8:56, 12:52]
        torch.testing.assert_close(out, reference)
        with pytest.raises(ValueError, match="must be divisible"):
            monai_net(x)
        with pytest.raises(ValueError, match=r"got shape \(1, 1, 32, 32, 32\)"):
            ours(torch.zeros(1, 1, 32, 32, 32))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_runs_at_the_bundle_size(backbone):
    """At the bundle's own patch size (96 x 112) the training input and the whole-slice SliceInferer (99 x 117
    axial slices at 2 mm) give logits of the input's size."""
    parser = _parser(config_files(BUNDLE, "mbls", backbone=backbone), device=torch.device("cpu"), **TINY[backbone])
    net = parser.get_parsed_content("network").eval()
    inferer = parser.get_parsed_content("validate#inferer")
    with torch.no_grad():
        assert net(torch.randn(2, 1, 96, 112)).shape == (2, 4, 96, 112)
        out = inferer(torch.randn(1, 1, 99, 117, 2), net)
    assert out.shape == (1, 4, 99, 117, 2) and torch.isfinite(out).all()


# ---------------------------------------------------------------- 2D bundle, end to end


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mni4mm")
    prepare_mni_tissue(root, num_subjects=4, split=(2, 1, 1), seed=3, spacing=4.0, progress=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_trains_and_evaluates_2d(backbone, cohort, tmp_path):
    overrides = {**SMALL, **TINY[backbone], "dataset_dir": str(cohort), "runs_dir": str(tmp_path)}
    run_workflow("training", config_files(BUNDLE, "mbls", backbone=backbone), **overrides)
    run_workflow("evaluate", config_files(BUNDLE, "mbls", "evaluate.yaml", backbone=backbone), **overrides)
    (run_dir,) = (tmp_path / "mni_tissue").iterdir()
    assert run_dir.name == run_name("mbls", {"margin": 10.0, "alpha": 0.1}, backbone)
    state = torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    net = _parser(config_files(BUNDLE, "mbls", backbone=backbone), **SMALL, **TINY[backbone]).get_parsed_content("network_def")
    net.load_state_dict(state)  # the checkpoint is this backbone's
    summary = {r["metric"]: float(r["value"]) for r in csv.DictReader(open(run_dir / "eval" / "summary.csv"))}
    for key in ("ece", "cece", "brier", "nll", "dsc_mean"):
        assert math.isfinite(summary[key]), key
    for key in ("ece", "cece", "dsc_mean"):
        assert 0.0 <= summary[key] <= 1.0, key


# ---------------------------------------------------------------- 3D, from the same fragments


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_3d_trains_and_slides(backbone):
    """Each fragment builds its 3D network from the keys a 3D bundle defines (spatial_dims: 3, patch_size: a 3D
    list); three MbLS steps on one fixed 48 x 32 x 32 patch lower the loss; a SlidingWindowInferer with the patch as
    ROI covers a volume of another size (padded along the first axis, two windows along the second).

    48 x 32 x 32 rather than 32^3: SwinUNETR's bottleneck is the input / 32, and instance norm refuses a one-voxel
    map in training; 48 is a multiple of 16 (UNETR, ResUNet) and Swin pads it to 64."""
    patch = [48, 32, 32]
    parser = _parser([_train_yaml(), fragment("backbones", backbone)], spatial_dims=3, patch_size=patch, **TINY[backbone])
    net = parser.get_parsed_content("network_def")
    loss_fn = get_loss("mbls", 4, 3, margin=10.0, alpha=0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, *patch, generator=gen)
    y = (x > 0.5).long() + (x > -0.5).long() + (x > 1.0).long()  # four classes the input determines voxel-wise
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        logits = net(x)
        assert logits.shape == (1, 4, *patch)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    inferer = SlidingWindowInferer(roi_size=patch, sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        out = inferer(torch.randn(1, 1, 40, 44, 32, generator=gen), net.eval())
    assert out.shape == (1, 4, 40, 44, 32) and torch.isfinite(out).all()
