"""Local temperature scaling (LTS)."""

from __future__ import annotations

import copy
import math
import random
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibmonai.calibration.base import Calibrator
from calibmonai.losses.utils import finite_float, integer_arg, non_integral
from calibmonai.progress import progress

__all__ = ["LocalTemperatureScaling"]


def _branch(conv: type, in_ch: int, features: int) -> nn.Sequential:
    """Three dilated 5x5(x5) convolutions (dilation 1, 2, 4) ending in one channel, the last one zero-initialised."""
    last = conv(features, 1, 5, padding=8, dilation=4)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        conv(in_ch, features, 5, padding=2, dilation=1), nn.ReLU(inplace=True),
        conv(features, features, 5, padding=4, dilation=2), nn.ReLU(inplace=True), last,
    )  # fmt: skip


class LocalTemperatureScaling(Calibrator):
    """A small fully convolutional net predicting a positive temperature per voxel from the logits and the image.

    ``t_z`` (from the logits) and ``t_x`` (from the image) come from two branches of dilated 5x5 convolutions
    whose last layers are zero-initialised; a sigmoid gate ``g`` computed from both mixes them,
    ``t = g t_z + (1 - g) t_x``, and ``T = ReLU(t + 1) + eps``, so the untrained model is almost the identity (T = 1
    + eps everywhere). Trained with Adam on the validation NLL; the state with the lowest NLL on a held-out part of
    the validation data is kept.

    Ding, Z., Han, X., Liu, P., Niethammer, M. "Local Temperature Scaling for Probability Calibration." ICCV 2021.
    https://arxiv.org/abs/2008.05105

    Args:
        num_classes: number of classes, an integer >= 2.
        spatial_dims: 2 or 3. A 2D model applied to a 3D volume runs slice by slice along the last axis.
        image_channels: channels of the image input, an integer >= 1.
        features: channels of the hidden layers, an integer >= 1.
        eps: lower bound added to the temperature, a finite number > 0 (``T >= eps``: no division by 0).

    Raises:
        ValueError: naming the argument and the value, for any of them outside the above.
    """

    name = "lts"
    needs_image = True

    def __init__(self, num_classes: int, spatial_dims: int = 2, image_channels: int = 1, features: int = 16, eps: float = 1e-3) -> None:
        super().__init__(num_classes)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        image_channels = integer_arg(image_channels, "image_channels", 1, "LocalTemperatureScaling")
        features = integer_arg(features, "features", 1, "LocalTemperatureScaling")
        eps = finite_float(eps, "eps", "LocalTemperatureScaling")
        if eps <= 0:
            raise ValueError(f"LocalTemperatureScaling: eps must be > 0 (the lowest temperature), got {eps!r}.")
        num_classes = self.num_classes
        self.spatial_dims, self.image_channels, self.features, self.eps = spatial_dims, image_channels, features, eps
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.logit_branch = _branch(conv, num_classes, features)
        self.image_branch = _branch(conv, image_channels, features)
        self.gate = nn.Sequential(conv(num_classes + image_channels, features, 5, padding=2), nn.ReLU(inplace=True), conv(features, 1, 5, padding=2))

    def config(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "image_channels": self.image_channels, "features": self.features, "eps": self.eps}

    def _check_image(self, logits: torch.Tensor, image: torch.Tensor | None) -> None:
        """``ValueError`` unless ``image`` is a finite ``(B, Ci, *spatial)`` tensor for ``logits (B, C, *spatial)``.

        Args:
            logits: the logits the image goes with.
            image: the image, ``image_channels`` channels on the logits' batch and spatial sizes.
        """
        if image is None:
            raise ValueError("local temperature scaling needs the image as well as the logits.")
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"LocalTemperatureScaling: image must be a torch.Tensor, got {type(image).__name__}.")
        if image.ndim != logits.ndim or image.shape[0] != logits.shape[0] or image.shape[2:] != logits.shape[2:] or image.shape[1] != self.image_channels:
            raise ValueError(f"image shape {tuple(image.shape)} does not match logits {tuple(logits.shape)} ({self.image_channels} image channel(s)).")
        if image.is_floating_point() and not bool(torch.isfinite(image.detach().sum(dtype=torch.float64))):
            bad = int((~torch.isfinite(image)).sum())
            if bad:  # NaN temperatures would give NaN probabilities, and a fit on them a NaN NLL
                raise ValueError(f"LocalTemperatureScaling: the image {tuple(image.shape)} holds {bad} non-finite value(s) (NaN or Inf): a corrupt scan?")

    def temperature_map(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` temperatures for ``logits (B, C, *spatial)`` and ``image (B, Ci, *spatial)``.

        Args:
            logits: ``(B, C, *spatial)`` floating-point logits with the model's ``spatial_dims``.
            image: ``(B, Ci, *spatial)`` finite image of the logits' batch and spatial sizes.

        Raises:
            ValueError: for a missing image, one of another shape, or one holding NaN/Inf.
        """
        self._check_image(logits, image)
        return self._temperature_map(logits, image)

    def _temperature_map(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """:meth:`temperature_map` of an image already checked (by ``forward``, or by ``fit`` for each item)."""
        image = image.to(logits.dtype)
        t_z = self.logit_branch(logits)
        t_x = self.image_branch(image)
        g = torch.sigmoid(self.gate(torch.cat([logits, image], dim=1)))
        return F.relu(g * t_z + (1 - g) * t_x + 1.0) + self.eps

    def _forward_native(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self._temperature_map(logits, image), dim=1)

    def forward(self, logits: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probabilities of the shape of ``logits (B, C, *spatial)`` (integer logits are taken as
        ``float32`` values, as by the other calibrators), given ``image (B, Ci, *spatial)``.

        Args:
            logits: ``(B, C, *spatial)`` finite logits with at least one voxel; ``spatial_dims`` spatial dimensions,
                or 3 for a 2D model (run slice by slice along the last axis).
            image: ``(B, Ci, *spatial)`` finite image of the logits' batch and spatial sizes.

        Raises:
            ValueError: naming the shapes or counts, for logits of another number of classes or dimensionality, with
                no voxel or with NaN/Inf, or an image that is missing, of another shape or holds NaN/Inf (all checked
                before any computation).
        """
        logits = self._float_logits(logits)
        if logits.ndim != self.spatial_dims + 2 and not (self.spatial_dims == 2 and logits.ndim == 5):
            raise ValueError(f"a {self.spatial_dims}D LTS model cannot take logits of shape {tuple(logits.shape)}.")
        self._check_image(logits, image)
        if logits.ndim == self.spatial_dims + 2:
            return self._forward_native(logits, image)
        # a 2D model over a volume: slices along the last axis
        b, c, h, w, d = logits.shape
        z = logits.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        x = image.permute(0, 4, 1, 2, 3).reshape(b * d, image.shape[1], h, w)
        out = torch.cat([self._forward_native(z[i : i + 32], x[i : i + 32]) for i in range(0, b * d, 32)])
        return out.reshape(b, d, c, h, w).permute(0, 2, 3, 4, 1)

    def _check_item(self, k: int, item: Any) -> None:
        """``ValueError`` naming item ``k`` when it is not ``(logits (C, *spatial), image (Ci, *spatial), label
        (*spatial))`` of this model's classes, channels and dimensionality, with finite logits and labels in range."""
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"LTS item {k}: expected (logits, image, label), got {type(item).__name__} of length {len(item) if hasattr(item, '__len__') else '?'}.")
        z, x, y = (torch.as_tensor(t) for t in item)
        want = f"logits ({self.num_classes}, *spatial), image ({self.image_channels}, *spatial), label (*spatial) with {self.spatial_dims} spatial dims"
        if z.ndim != self.spatial_dims + 1 or z.shape[0] != self.num_classes or x.ndim != z.ndim or x.shape[0] != self.image_channels or tuple(y.shape) != tuple(z.shape[1:]) or tuple(x.shape[1:]) != tuple(z.shape[1:]):
            raise ValueError(f"LTS item {k}: expected {want}; got {tuple(z.shape)}, {tuple(x.shape)}, {tuple(y.shape)} (a channel-first label (1, *spatial) needs label[0]).")
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"LTS item {k}: the logits hold non-finite values (NaN or Inf).")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"LTS item {k}: the image holds {int((~torch.isfinite(x)).sum())} non-finite value(s) (NaN or Inf): a corrupt scan?")
        if y.is_floating_point() and y.numel():
            frac = non_integral(y)
            if bool(frac.any()):
                raise ValueError(f"LTS item {k}: labels must be class indices (whole numbers), got {int(frac.sum())} non-integral value(s) such as {float(y[frac][0]):g}.")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"LTS item {k}: labels must lie in [0, {self.num_classes - 1}], got [{int(y.min())}, {int(y.max())}].")

    def _batch(self, items: Sequence[Any], idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items ``idx`` (all of one spatial shape) stacked as ``logits (B, C, *spatial)``, ``image (B, Ci, *spatial)``
        in the model's dtype and on its device, and ``label (B, *spatial)`` as ``long``."""
        p = next(self.parameters())
        z = torch.stack([torch.as_tensor(items[i][0]) for i in idx]).to(device=p.device, dtype=p.dtype)
        x = torch.stack([torch.as_tensor(items[i][1]) for i in idx]).to(device=p.device, dtype=p.dtype)
        y = torch.stack([torch.as_tensor(items[i][2]) for i in idx]).to(p.device).long()
        return z, x, y

    @staticmethod
    def _shape_batches(items: Sequence[Any], idx: Sequence[int], batch_size: int) -> list[list[int]]:
        """``idx`` cut into batches of at most ``batch_size`` items of one spatial shape: the items of each shape, in
        the order of ``idx``, cut into consecutive runs; the batches ordered by the position of their first item in
        ``idx`` (for items of a single shape, simply ``idx`` cut into consecutive runs of ``batch_size``)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in idx:
            groups.setdefault(tuple(torch.as_tensor(items[i][0]).shape), []).append(i)
        batches = [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
        position = {i: k for k, i in enumerate(idx)}
        return sorted(batches, key=lambda b: position[b[0]])

    def nll(self, items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch_size: int = 16) -> float:
        """Mean NLL ``-log p_y`` of the calibrated probabilities over every voxel of ``items`` (``(logits (C,
        *spatial), image (Ci, *spatial), label (*spatial))``, of any spatial sizes): each voxel counts once, so an
        item weighs by its number of voxels. The held-out criterion of :meth:`fit`.

        Raises:
            ValueError: for malformed items (see :meth:`fit`) or no item.
        """
        if len(items) == 0:
            raise ValueError("LTS nll: no item given.")
        for k, item in enumerate(items):
            self._check_item(k, item)
        return self._nll(items, list(range(len(items))), batch_size)

    def _nll(self, items: Sequence[Any], idx: Sequence[int], batch_size: int) -> float:
        with torch.no_grad():
            total, count = 0.0, 0
            for b in self._shape_batches(items, idx, batch_size):
                z, x, y = self._batch(items, b)
                p = self._forward_native(z, x)
                total += float(F.nll_loss(torch.log(p.clamp_min(1e-12)), y, reduction="sum"))
                count += y.numel()
        return total / count

    def fit(  # type: ignore[override]
        self,
        items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        epochs: int = 100,
        lr: float = 1e-3,
        holdout: float = 0.25,
        batch_size: int = 16,
        seed: int = 0,
        progress_every: int | None = None,
    ) -> dict[str, Any]:
        """Train on ``items``: ``(logits (C, *spatial), image (Ci, *spatial), label (*spatial))``.

        The items may differ in spatial size (validation subjects on different grids, whole 3D volumes): a mini-batch
        stacks only items of one size (the training items of each size, in the epoch's shuffled order, cut into
        batches of at most ``batch_size``), and its loss is the mean NLL over its voxels. Items of a single size are
        batched exactly as ``batch_size`` consecutive items of the shuffled order.

        A ``holdout`` fraction of the items (at least one: the first ``max(1, round(holdout * len(items)))`` of
        ``range(len(items))`` shuffled by ``random.Random(seed)``) selects the epoch with the lowest held-out NLL,
        the mean over all their voxels (:meth:`nll`).

        Args:
            items: the validation items; labels may be float tensors holding whole numbers.
            epochs: passes over the training items.
            lr: Adam learning rate.
            holdout: fraction of the items held out to select the epoch, a number in ``[0, 1)`` that leaves at
                least one training item; ``0`` holds out a single item (at least one is always held out).
            batch_size: most items per mini-batch.
            seed: seed of the split, the shuffling and the initialisation of the optimiser's randomness.
            progress_every: report the epoch, the training NLL (mean over the epoch's training voxels) and the
                held-out NLL every this many epochs and at the last one, through :func:`calibmonai.progress.progress`
                (logger ``calibmonai.calibration``); ``None``: about ten reports per fit.

        Raises:
            ValueError: for fewer than 2 items, malformed items (naming the item and the shapes) or items with NaN/Inf
                logits or image, ``epochs < 0``, ``batch_size < 1``, ``progress_every < 1``, or a ``holdout`` outside
                ``[0, 1)`` or that holds out every item.
        """
        if len(items) < 2:
            raise ValueError(f"LTS needs at least 2 validation images (one held out), got {len(items)}.")
        if int(epochs) < 0 or int(batch_size) < 1:
            raise ValueError(f"LTS fit needs epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}.")
        if progress_every is not None and int(progress_every) < 1:
            raise ValueError(f"progress_every must be >= 1 (or None for about ten reports), got {progress_every}.")
        holdout = finite_float(holdout, "holdout", "LocalTemperatureScaling.fit")
        if not 0 <= holdout < 1:
            raise ValueError(f"LocalTemperatureScaling.fit: holdout must be a fraction in [0, 1), got {holdout!r}.")
        n_hold = max(1, int(round(holdout * len(items))))
        if n_hold >= len(items):
            raise ValueError(
                f"LocalTemperatureScaling.fit: holdout={holdout!r} holds out {n_hold} of the {len(items)} items (round(holdout * {len(items)})), "
                "leaving none to train on: lower it."
            )
        for k, item in enumerate(items):
            self._check_item(k, item)
        every = int(progress_every) if progress_every is not None else max(1, int(epochs) // 10)
        rng = random.Random(seed)
        order = list(range(len(items)))
        rng.shuffle(order)
        hold, train = order[:n_hold], order[n_hold:]
        sizes = sorted({tuple(torch.as_tensor(it[0]).shape[1:]) for it in items})

        torch.manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        t0 = time.time()
        start = self._nll(items, hold, batch_size)
        best, best_state, best_epoch = start, copy.deepcopy(self.state_dict()), 0
        progress(
            f"[calibrate] lts: {len(train)} training and {len(hold)} held-out item(s) of {len(sizes)} size(s), {epochs} epoch(s); "
            f"held-out NLL before training {start:.4f}",
            "calibmonai.calibration",
        )
        for epoch in range(1, epochs + 1):
            rng.shuffle(train)
            train_total, train_count = 0.0, 0
            for b in self._shape_batches(items, train, batch_size):
                z, x, y = self._batch(items, b)
                opt.zero_grad()
                loss = F.nll_loss(torch.log(self._forward_native(z, x).clamp_min(1e-12)), y)
                loss.backward()
                opt.step()
                train_total += float(loss.detach()) * y.numel()
                train_count += y.numel()
            value = self._nll(items, hold, batch_size)
            if value < best and math.isfinite(value):
                best, best_state, best_epoch = value, copy.deepcopy(self.state_dict()), epoch
            if epoch % every == 0 or epoch == epochs:
                train_nll = train_total / train_count if train_count else float("nan")
                progress(
                    f"[calibrate] lts: epoch {epoch}/{epochs}: training NLL {train_nll:.4f}, held-out NLL {value:.4f} "
                    f"(best {best:.4f} at epoch {best_epoch}) ({time.time() - t0:.0f} s)",
                    "calibmonai.calibration",
                )
        self.load_state_dict(best_state)
        self.fitted = True
        return {"holdout_nll_before": start, "holdout_nll_after": best, "best_epoch": best_epoch, "train_items": len(train), "holdout_items": len(hold)}

    def parameters_summary(self) -> dict[str, Any]:
        return {"parameters": sum(p.numel() for p in self.parameters())}
