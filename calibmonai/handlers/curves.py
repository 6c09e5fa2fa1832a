"""Per-validation learning curves: validation DSC, NLL, ECE (and the distance to a soft reference) to a CSV file,
one row per validation run, so over-fitting of the probabilities (NLL rising while DSC holds; Mukhoti et al.,
"Calibrating deep neural networks using focal loss", NeurIPS 2020, Fig. 1) can be seen epoch by epoch."""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Callable, Sequence

import torch

from calibmonai.metrics.calibration import CalibrationMetrics

__all__ = ["ValidationCurveLogger", "CURVE_COLUMNS", "read_curves", "plot_curves"]

#: columns of ``curves.csv`` (``ref_*`` are NaN when the validation items carry no ``probs`` reference)
CURVE_COLUMNS = ("epoch", "iteration", "dsc", "nll", "ece", "cece", "brier", "mean_confidence", "ref_ece", "ref_mad")


class ValidationCurveLogger:
    """Append one row to ``<output_dir>/curves.csv`` at the end of every run of a MONAI evaluator.

    The evaluator's outputs must hold softmax probabilities (``prob_key``) and the label (``label_key``, class
    indices or one-hot). Per validation: ``dsc`` (the evaluator's key metric, read from ``engine.state.metrics``),
    ``nll``, ``ece``, ``cece``, ``brier`` (mean over cases, ground-truth foreground voxels for NLL/ECE/CECE, as
    :class:`calibmonai.metrics.CalibrationMetrics`), ``mean_confidence`` (mean top probability on those voxels) and,
    when the batch items name a soft reference (``reference_key``, a 4D NIfTI path as written by
    :func:`calibmonai.data.prepare_mni_tissue`), ``ref_ece`` (15-bin ECE of all class probabilities against the
    reference probabilities on brain voxels, as :func:`calibmonai.evaluation.evaluate_run`) and ``ref_mad``.
    ``epoch`` is the trainer's epoch (MONAI's ``ValidationHandler`` runs the evaluator with it); ``iteration`` the
    evaluator's iteration count (validation batches).

    Args:
        output_dir: folder of ``curves.csv`` (created); an existing file is replaced when the first row is written.
        dsc_metric: name of the DSC metric in ``engine.state.metrics``.
        prob_key, label_key: keys of the probabilities and label in the decollated outputs.
        reference_key: key of the soft-reference path in the batch items (``None``: no ``ref_*`` columns).
        num_bins: equal-width bins of the ECEs.
        filename: name of the CSV file.
    """

    def __init__(
        self,
        output_dir: str,
        dsc_metric: str = "val_mean_dice",
        prob_key: str = "prob",
        label_key: str = "label",
        reference_key: str | None = "probs",
        num_bins: int = 15,
        filename: str = "curves.csv",
    ) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
        self.path = os.path.join(str(output_dir), filename)
        self.dsc_metric, self.prob_key, self.label_key, self.reference_key = dsc_metric, prob_key, label_key, reference_key
        self.num_bins = int(num_bins)
        self.metric = CalibrationMetrics(metric_names=("nll", "ece", "cece", "brier"), num_bins=num_bins, foreground="label")
        self.logger = logging.getLogger("calibmonai")
        self._references: dict[str, torch.Tensor] = {}
        self._started = False
        #: the rows this logger wrote (formatted as in the file), kept with a training's resume state
        self.rows: list[dict[str, Any]] = []
        self._reset(None)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def restore(self, rows: Sequence[dict[str, Any]]) -> None:
        """Continue a resumed training's curves: write the file again with the stopped run's ``rows`` (and nothing of
        an earlier training it may still hold), then append as usual."""
        from calibmonai.run_files import atomic_file

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with atomic_file(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        self.rows = [dict(r) for r in rows]
        self._started = True

    def _reset(self, engine: Any) -> None:
        self.metric.reset()
        self._conf_sum, self._conf_count = 0.0, 0
        self._ref = torch.zeros(3, self.num_bins, dtype=torch.float64)  # count, sum p, sum q
        self._mad: list[float] = []

    def _reference(self, path: str, like: torch.Tensor) -> torch.Tensor:
        if path not in self._references:
            from calibmonai.evaluation import _load_reference

            self._references[path] = _load_reference(path, like)
        return self._references[path]

    def _accumulate(self, engine: Any) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for i, out in enumerate(outputs):
            prob = torch.as_tensor(out[self.prob_key]).detach().float().cpu()
            label = torch.as_tensor(out[self.label_key]).detach().cpu()
            if label.shape[0] > 1:  # one-hot
                label = label.argmax(0, keepdim=True)
            self.metric(prob[None], label[None].long())
            fg = label[0] > 0
            if bool(fg.any()):
                self._conf_sum += float(prob.max(0).values[fg].double().sum())
                self._conf_count += int(fg.sum())
            item = batch[i] if i < len(batch) else {}
            path = item.get(self.reference_key) if self.reference_key and isinstance(item, dict) else None
            if isinstance(path, (list, tuple)):
                path = path[0]
            if path:
                ref = self._reference(str(path), prob)
                brain = ref[0] < 0.5
                p, q = prob[:, brain].flatten().double(), ref[:, brain].flatten().double()
                bins = (p * self.num_bins).long().clamp_(0, self.num_bins - 1)
                for j, w in enumerate((None, p, q)):
                    self._ref[j] += torch.bincount(bins, weights=w, minlength=self.num_bins)
                self._mad.append(float((prob - ref).abs().mean(0)[brain].mean()))

    def _write(self, engine: Any) -> None:
        values = self.metric.aggregate("case")
        count = self._ref[0].sum()
        row = {
            "epoch": int(engine.state.epoch), "iteration": int(getattr(engine.state, "iteration", 0)),
            "dsc": float(engine.state.metrics.get(self.dsc_metric, float("nan"))),
            **{k: values[k] for k in ("nll", "ece", "cece", "brier")},
            "mean_confidence": self._conf_sum / self._conf_count if self._conf_count else float("nan"),
            "ref_ece": float((self._ref[2] - self._ref[1]).abs().sum() / count) if count > 0 else float("nan"),
            "ref_mad": sum(self._mad) / len(self._mad) if self._mad else float("nan"),
        }  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        new = not self._started or not os.path.isfile(self.path)
        formatted = {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
        with open(self.path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(formatted)
        self.rows.append(formatted)
        self._started = True
        self.logger.info("validation curve, epoch %d: " % row["epoch"] + ", ".join(f"{k} {row[k]:.4f}" for k in CURVE_COLUMNS[2:]))


def read_curves(path: str) -> list[dict[str, float]]:
    """Rows of a ``curves.csv`` as floats."""
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_curves(curves: dict[str, str], path: str, columns: Sequence[str] = ("dsc", "nll", "ece", "ref_ece", "mean_confidence"), title: str = "") -> str:
    """One PNG with a panel per column of ``curves.csv`` files against the epoch, one line per run.

    Args:
        curves: ``{run label: path of its curves.csv}``.
        path: PNG file to write (parent folders are created).
        columns: the columns to plot, each one of :data:`CURVE_COLUMNS`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unknown = [c for c in columns if c not in CURVE_COLUMNS]
    if unknown:
        raise ValueError(f"unknown curve column(s) {unknown}; available: {CURVE_COLUMNS}.")
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2), squeeze=False)
    for label, csv_path in curves.items():
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"curves file {csv_path} (run {label!r}) does not exist.")
        rows = read_curves(csv_path)
        for ax, col in zip(axes[0], columns):
            ax.plot([r["epoch"] for r in rows], [r[col] for r in rows], marker=".", label=label)
    for ax, col in zip(axes[0], columns):
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {col}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
