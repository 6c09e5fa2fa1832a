"""Reliability diagrams as PNG files."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch

__all__ = ["plot_reliability_diagram"]


def plot_reliability_diagram(
    stats: Mapping[str, torch.Tensor] | Mapping[str, Mapping[str, torch.Tensor]],
    path: str | os.PathLike,
    title: str = "Reliability diagram",
) -> str:
    """Write a reliability diagram: accuracy vs confidence per bin (bars, gap to the diagonal shaded), the ECE
    in the title, and the histogram of confidences beneath (log scale).

    Args:
        stats: one output of :func:`calibmonai.metrics.reliability_statistics`, or ``{label: stats}`` to
            overlay several (e.g. one per method).
        path: PNG file to write (parent folders are created).
        title: the figure's title; the ECE of each series is added to it.

    Returns:
        the path written, as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"": stats} if "edges" in stats else dict(stats)  # type: ignore[arg-type]
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    titles = []
    width_total = 0.8
    for i, (name, s) in enumerate(series.items()):
        edges = np.asarray(s["edges"], dtype=float)
        w = (edges[1] - edges[0]) * width_total / len(series)
        left = edges[:-1] + (edges[1] - edges[0]) * (1 - width_total) / 2 + i * w
        acc = np.nan_to_num(np.asarray(s["accuracy"], dtype=float))
        conf = np.asarray(s["confidence"], dtype=float)
        count = np.asarray(s["count"], dtype=float)
        ece = float(s["ece"])
        label = f"{name} (ECE {ece:.4f})" if name else f"accuracy (ECE {ece:.4f})"
        ax.bar(left, acc, width=w, align="edge", alpha=0.75, edgecolor="k", lw=0.5, label=label)
        ok = ~np.isnan(conf)
        if len(series) == 1:
            lo = np.minimum(conf, acc)
            ax.bar(left[ok], np.abs(conf - acc)[ok], bottom=lo[ok], width=w, align="edge", color="red", alpha=0.3, hatch="//", label="gap to confidence")
        ax.plot((left + w / 2)[ok], conf[ok], "k_", markersize=10, mew=2, label="mean confidence" if i == 0 else None)
        axh.bar(left, np.maximum(count, 0), width=w, align="edge", alpha=0.75)
        titles.append(f"{name + ' ' if name else ''}ECE = {ece:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\n" + ", ".join(titles), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    axh.set_yscale("log")
    axh.set_xlabel("confidence (max probability)")
    axh.set_ylabel("voxels")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
