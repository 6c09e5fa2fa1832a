"""Fixed-size, class-stratified, seeded random sample of voxels from a stream of batches."""

from __future__ import annotations

import torch

from calibmonai.calibration.checks import check_voxels
from calibmonai.losses.utils import integer_arg, non_integral

__all__ = ["StratifiedVoxelSampler", "VoxelSample"]


class VoxelSample:
    """A voxel sample: ``logits (N, C)``, ``labels (N,)`` and ``weights (N,)``.

    The weights undo the class stratification: a voxel of class ``c`` weighs ``seen_c / kept_c`` so that weighted
    sums over the sample estimate sums over every voxel seen.
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        """
        Args:
            logits: ``(N, C)``; integer logits are taken as ``float32`` values.
            labels: ``(N,)`` class indices in ``[0, C)``; float labels holding whole numbers are converted to ``long``.
            weights: ``(N,)`` finite, non-negative voxel weights, not all zero.

        Raises:
            ValueError: naming the shapes or values, for logits that are not ``(N, C)`` with ``N >= 1`` and ``C >= 2``,
                labels or weights that are not ``(N,)``, non-finite logits, labels that are not whole numbers or lie
                outside ``[0, C)``, negative or non-finite weights, or weights summing to 0 (no voxel has weight): a
                calibrator fitted on them would be silently wrong (a single NaN logit makes the temperature and Platt
                fits NaN, all-zero weights make every weighted NLL 0 / 0).
        """
        logits, labels, weights = torch.as_tensor(logits), torch.as_tensor(labels), torch.as_tensor(weights)
        if not logits.is_floating_point() and not logits.is_complex():
            logits = logits.float()
        if labels.is_floating_point():
            frac = non_integral(labels)
            if bool(frac.any()):
                raise ValueError(
                    f"labels must be class indices (whole numbers), got {int(frac.sum())} non-integral value(s) of dtype {labels.dtype} "
                    f"such as {float(labels[frac][0]):g}."
                )
        if not labels.is_complex():
            labels = labels.long()
        if not weights.is_floating_point() and not weights.is_complex():
            weights = weights.double()
        check_voxels(logits, labels, weights)
        self.logits, self.labels, self.weights = logits, labels, weights

    def __len__(self) -> int:
        return int(self.labels.numel())


class StratifiedVoxelSampler:
    """Keep at most ``sample_size / C`` voxels per class from a stream, uniformly at random (seeded).

    Memory is bounded by ``sample_size`` plus one batch, whatever the number of voxels streamed: each class keeps
    the voxels with the smallest random keys among those seen (a reservoir by random priorities).

    Args:
        num_classes: number of classes ``C``, an integer >= 2.
        sample_size: total number of voxels kept (split evenly between classes), an integer >= ``num_classes``.
            Floats are refused, also whole ones such as ``2e5`` (write ``200000``): a count is never rounded silently.
        seed: seed of the random priorities.

    Raises:
        ValueError: naming the argument, for a ``num_classes`` or ``sample_size`` that is not an integer (``bool``,
            float or string) or is below its minimum.
    """

    def __init__(self, num_classes: int, sample_size: int = 200_000, seed: int = 0) -> None:
        num_classes = integer_arg(num_classes, "num_classes", 2, "StratifiedVoxelSampler")
        sample_size = integer_arg(sample_size, "sample_size", 1, "StratifiedVoxelSampler")
        if sample_size < num_classes:
            raise ValueError(f"sample_size must be >= num_classes ({num_classes}), got {sample_size}.")
        self.num_classes = num_classes
        self.per_class = sample_size // num_classes
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = [torch.empty(0) for _ in range(num_classes)]
        self.logits = [torch.empty(0, num_classes) for _ in range(num_classes)]
        self.seen = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch: ``logits (B, C, *spatial)``, ``labels (B, 1, *spatial)`` or ``(B, *spatial)``, optional mask.

        Args:
            logits: ``(B, C, *spatial)`` logits of the batch.
            labels: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices in ``[0, C)``: an integer, ``bool`` or
                floating-point tensor holding whole numbers (complex ones are refused).
            mask: ``None`` (every voxel), or ``(B, 1, *spatial)`` or ``(B, *spatial)``: the voxels to sample from.

        Raises:
            ValueError: naming the shapes, for logits that are not ``(B, C, *spatial)``, labels or a mask of another
                shape than the logits' without the class axis, complex or non-integral labels or labels outside
                ``[0, C)``, or non-finite logits among the voxels kept.
        """
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}, *spatial), got {tuple(logits.shape)}.")
        b, spatial = logits.shape[0], tuple(logits.shape[2:])
        shapes = ((b, 1) + spatial, (b,) + spatial)  # the voxel maps' shapes: the logits' without the class axis
        labels = torch.as_tensor(labels)
        if tuple(labels.shape) not in shapes:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)}: it must be {shapes[0]} or {shapes[1]}.")
        if labels.is_complex():
            raise ValueError(f"labels must be real class indices, got dtype {labels.dtype}.")
        flat = logits.detach().float().movedim(1, -1).reshape(-1, self.num_classes).cpu()
        raw = labels.detach().reshape(-1).cpu()
        if raw.is_floating_point() and raw.numel():
            frac = non_integral(raw)
            if bool(frac.any()):
                raise ValueError(f"labels must be class indices; got non-integer values such as {float(raw[frac][0]):g}.")
        lab = raw.long()
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got [{int(lab.min())}, {int(lab.max())}].")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) not in shapes:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match logits shape {tuple(logits.shape)}: "
                    f"it must be {shapes[0]} or {shapes[1]} ({flat.shape[0]} voxels), got {mask.numel()} voxels."
                )
            keep = mask.detach().reshape(-1).bool().cpu()
            flat, lab = flat[keep], lab[keep]
        bad = int((~torch.isfinite(flat)).sum())
        if bad:
            raise ValueError(
                f"the logits {tuple(logits.shape)} hold {bad} non-finite value(s) (NaN or Inf) among the voxels sampled: "
                "a diverged network or a corrupt scan? A calibrator fitted on them would be NaN."
            )
        for c in range(self.num_classes):
            sel = lab == c
            n = int(sel.sum())
            if n == 0:
                continue
            self.seen[c] += n
            keys = torch.cat([self.keys[c], torch.rand(n, generator=self.generator)])
            vals = torch.cat([self.logits[c], flat[sel]])
            if keys.numel() > self.per_class:
                idx = torch.topk(keys, self.per_class, largest=False).indices
                keys, vals = keys[idx], vals[idx]
            self.keys[c], self.logits[c] = keys, vals

    def sample(self) -> VoxelSample:
        """The voxels kept so far, with their stratification weights."""
        kept = [k.numel() for k in self.keys]
        if sum(kept) == 0:
            raise ValueError("no voxel was sampled: the stream was empty (or fully masked out).")
        logits = torch.cat(self.logits)
        labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(kept)])
        weights = torch.cat([torch.full((n,), float(self.seen[c]) / n if n else 0.0, dtype=torch.float64) for c, n in enumerate(kept)])
        return VoxelSample(logits, labels, weights)
