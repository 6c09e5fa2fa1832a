"""Each method trains a tiny 2D and 3D MONAI UNet for a few steps: finite and decreasing loss."""

import pytest
import torch
from monai.networks.nets import UNet

from calibmonai.losses import METHODS, get_loss


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(METHODS))
def test_tiny_unet_trains(name, dims):
    torch.manual_seed(0)
    size = (16,) * dims
    x = torch.randn(2, 1, *size)
    # a learnable target: three intensity bands of a smoothed input
    y = torch.bucketize(x, torch.tensor([-0.5, 0.5])).long()
    net = UNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    loss_fn = get_loss(name, num_classes=3, spatial_dims=dims)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        assert torch.isfinite(loss), f"{name} {dims}D: non-finite loss {loss}"
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{name} {dims}D did not lower its loss: {losses}"
