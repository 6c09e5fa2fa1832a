"""A run trained with other network settings than the bundle's defaults: its checkpoint is refused with the differing
tensors named (not PyTorch's page of size mismatches), and `calibmonai infer` / `export-bundle` take the training's
config keys as flags, checked against the config."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

import calibmonai.bundle_export
import calibmonai.bundle_tools
from calibmonai.bundle_tools import check_config_keys, config_files, inference_config_files
from calibmonai.cli import main
from calibmonai.prediction import check_checkpoint, load_checkpoint


def _unet(channels=(4, 8, 16), res_units=2):
    return UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=channels, strides=(2, 2), num_res_units=res_units)


def test_a_checkpoint_of_another_network_is_refused_naming_the_tensors(tmp_path):
    torch.manual_seed(0)
    small = _unet()
    path = tmp_path / "model.pt"
    torch.save(small.state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(_unet((8, 16, 32)), str(path), "cpu")
    text = str(info.value)
    assert str(path) in text and "trained with another network than this config's UNet" in text
    assert "model.0.conv.unit0.conv.weight: (4, 1, 3, 3) in the checkpoint, (8, 1, 3, 3) here" in text
    assert "--network_def#channels" in text
    with pytest.raises(ValueError, match=r"0 tensors of other shapes, 14 missing, 35 unexpected; missing from the checkpoint: "
                       r"model.0.adn.A.weight, .*; not in this network: model.0.conv.unit0.adn.A.weight"):  # fmt: skip
        check_checkpoint(_unet(res_units=0), str(path))  # other layers: both sides' names, counted
    # the same architecture loads, from a bare state dict or MONAI's {"model": ...} checkpoint, weights equal
    torch.save({"model": small.state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    for p in (path, tmp_path / "ckpt.pt"):
        net = load_checkpoint(_unet(), str(p), "cpu")
        check_checkpoint(_unet(), str(p))
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), small.state_dict().values()))
        assert not net.training
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_checkpoint(_unet(), str(tmp_path / "tensor.pt"), "cpu")
    with pytest.raises(FileNotFoundError, match="no trained checkpoint"):
        load_checkpoint(_unet(), str(tmp_path / "none.pt"), "cpu")


def test_config_keys_are_checked():
    files, _ = inference_config_files("promise12_seg2d", "ce")
    check_config_keys(files, {"network_def#channels": [4, 8], "image_size": [32, 32], "preprocess::spacing": [1, 1, 0]}, "x")
    check_config_keys(files, {}, "x")
    with pytest.raises(ValueError, match=r"unknown flag --imagesize for `x`: .* config keys: .*image_size"):
        check_config_keys(files, {"image_size": [32, 32], "imagesize": 3}, "x")


def test_infer_and_export_pass_config_keys_on(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(calibmonai.bundle_tools, "run_workflow", lambda run_id, files, **kw: seen.update(run=(run_id, files, kw)))
    main(["infer", "scans", "out", "--bundle", "promise12_seg2d", "--runs_dir", "r", "--network_def#channels", "[4, 8, 16, 32]",
          "--image_size", "[32, 32]"])  # fmt: skip
    run_id, files, kw = seen["run"]
    assert run_id == "run" and files == config_files("promise12_seg2d", "ce", workflow="inference.yaml")
    assert kw["network_def#channels"] == [4, 8, 16, 32] and kw["image_size"] == [32, 32] and kw["runs_dir"] == "r"
    assert kw["input_dir"] == "scans" and kw["output_dir"] == "out"
    with pytest.raises(SystemExit) as code:  # a mistyped flag: neither the command's nor a config key
        main(["infer", "scans", "out", "--bundle", "promise12_seg2d", "--netwrk_def#channels", "[4]"])
    assert code.value.code == 2 and "run" in seen
    monkeypatch.setattr(calibmonai.bundle_export, "export_bundle", lambda *a, **kw: seen.update(export=(a, kw)) or str(tmp_path))
    main(["export-bundle", "--bundle", "acdc_seg2d", "--method", "ce", "--out", "o", "--network_def#channels", "[4, 8, 16, 32]"])
    args, kw = seen["export"]
    assert args == ("acdc_seg2d", "ce", "o") and kw["network_def#channels"] == [4, 8, 16, 32]


def test_a_whole_number_given_for_a_float_hyper_parameter_names_the_same_run():
    from calibmonai.bundle_tools import bundle_parser, run_name

    assert run_name("mbls", {"margin": 5, "alpha": 0.1}) == run_name("mbls", {"margin": 5.0, "alpha": 0.1}) == "mbls_alpha0.1_margin5.0"
    assert run_name("focal", {"gamma": 2}) == "focal_gamma2.0"
    assert run_name("meep_ce_kl", {"lam": 1}, "attention_unet") == "meep_ce_kl_lam1.0_attention_unet"
    # values the loss does not default to a float are written as given
    assert run_name("mbls", {"penalty": "l2", "margin": 8}) == "mbls_margin8.0_penaltyl2"
    assert run_name("ce", {}) == "ce"
    # as the bundle names the run folder from a command line's --loss_kwargs
    for margin in (5, 5.0):
        parser = bundle_parser(config_files("mni_tissue_seg2d", "mbls"), loss_kwargs={"margin": margin, "alpha": 0.1})
        assert parser.get_parsed_content("method_tag") == "mbls_alpha0.1_margin5.0"
        assert parser.get_parsed_content("run_dir").endswith("mbls_alpha0.1_margin5.0")
