"""Fixed-size, class-stratified, seeded random sample of voxels from a stream of batches."""

from __future__ import annotations

import torch

from calibmonai.losses.utils import non_integral

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
        if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise ValueError(f"logits must be (N, C) with N >= 1 voxels and C >= 2 classes, got {tuple(logits.shape)}.")
        n, c = logits.shape
        if tuple(labels.shape) != (n,) or tuple(weights.shape) != (n,):
            raise ValueError(f"labels and weights must be ({n},) like the logits {tuple(logits.shape)}, got {tuple(labels.shape)} and {tuple(weights.shape)}.")
        if not logits.is_floating_point():
            logits = logits.float()
        bad = int((~torch.isfinite(logits)).sum())
        if bad:
            raise ValueError(f"{bad} non-finite logit value(s) (NaN or Inf) in the sample: a diverged network or a corrupt scan?")
        if labels.is_floating_point():
            frac = non_integral(labels)
            if bool(frac.any()):
                raise ValueError(
                    f"labels must be class indices (whole numbers), got {int(frac.sum())} non-integral value(s) of dtype {labels.dtype} "
                    f"such as {float(labels[frac][0]):g}."
                )
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise ValueError(f"labels must lie in [0, {c - 1}], got [{int(labels.min())}, {int(labels.max())}].")
        if not weights.is_floating_point():
            weights = weights.double()
        finite = torch.isfinite(weights)
        if not bool(finite.all()):
            raise ValueError(f"weights must be finite, got {int((~finite).sum())} non-finite value(s) (NaN or Inf) among {n}.")
        if bool((weights < 0).any()):
            raise ValueError(f"weights must be non-negative, got {int((weights < 0).sum())} negative value(s) among {n} (minimum {float(weights.min()):g}).")
        if float(weights.double().sum()) <= 0:
            raise ValueError(f"no voxel has weight: the {n} weights sum to 0, so every weighted NLL would be 0 / 0 (NaN).")
        self.logits, self.labels, self.weights = logits, labels, weights

    def __len__(self) -> int:
        return int(self.labels.numel())


class StratifiedVoxelSampler:
    """Keep at most ``sample_size / C`` voxels per class from a stream, uniformly at random (seeded).

    Memory is bounded by ``sample_size`` plus one batch, whatever the number of voxels streamed: each class keeps
    the voxels with the smallest random keys among those seen (a reservoir by random priorities).

    Args:
        num_classes: number of classes ``C``.
        sample_size: total number of voxels kept (split evenly between classes).
        seed: seed of the random priorities.
    """

    def __init__(self, num_classes: int, sample_size: int = 200_000, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
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

        Raises:
            ValueError: naming the shapes, for logits that are not ``(B, C, *spatial)``, labels or a mask with another
                number of voxels than the logits, non-integral labels or labels outside ``[0, C)``, or non-finite
                logits among the voxels kept.
        """
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}, *spatial), got {tuple(logits.shape)}.")
        flat = logits.detach().float().movedim(1, -1).reshape(-1, self.num_classes).cpu()
        raw = torch.as_tensor(labels).detach().reshape(-1).cpu()
        if raw.is_floating_point() and raw.numel() and not bool((raw == raw.round()).all()):
            raise ValueError(f"labels must be class indices; got non-integer values such as {float(raw[raw != raw.round()][0]):g}.")
        lab = raw.long()
        if lab.numel() != flat.shape[0]:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits shape {tuple(logits.shape)}.")
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got [{int(lab.min())}, {int(lab.max())}].")
        if mask is not None:
            keep = torch.as_tensor(mask).detach().reshape(-1).bool().cpu()
            if keep.numel() != flat.shape[0]:
                raise ValueError(
                    f"mask shape {tuple(torch.as_tensor(mask).shape)} does not match logits shape {tuple(logits.shape)}: "
                    f"it must be (B, 1, *spatial) or (B, *spatial) with {flat.shape[0]} voxels, got {keep.numel()}."
                )
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
