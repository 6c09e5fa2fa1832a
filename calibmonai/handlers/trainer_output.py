"""The trainer's output without decollating each batch, in the shape MONAI's handlers read.

MONAI's ``SupervisedTrainer`` decollates every batch by default (``decollate=True``): it splits the batch and its
output into one dictionary per image and turns the scalar loss into a Python number, which reads it back from the
GPU, a host synchronisation at every iteration that keeps the host from queueing the next step while the GPU runs
this one. The bundles train with ``decollate: false`` and :class:`UndecollatedOutput`, which presents the output as
a one-item list ``[{"loss": ..., "pred": <whole batch>, ...}]``: handlers that read ``from_engine(keys,
first=True)`` (MONAI's ``StatsHandler``, the ``MLFlowHandler`` of ``monai.bundle run ... --tracking mlflow``) find
the loss where they look for it, and only read it back when they log it.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["UndecollatedOutput", "training_loss"]


class UndecollatedOutput:
    """Wrap a trainer's output dictionary in a one-item list after each model step (``IterationEvents.MODEL_COMPLETED``,
    where MONAI's own decollation runs, so before every ``ITERATION_COMPLETED`` handler). For a
    ``SupervisedTrainer`` with ``decollate=False`` and no ``postprocessing``; an output that is already a list is
    left as it is.
    """

    def attach(self, engine: Any) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if isinstance(engine.state.output, Mapping):
            engine.state.output = [engine.state.output]


def training_loss(output: Any, loss_key: str = "loss") -> Any:
    """The loss in a trainer's ``engine.state.output``: the first item's ``loss_key`` entry when the output is a list
    of dictionaries (decollated, or wrapped by :class:`UndecollatedOutput`), else the dictionary's own. For the
    ``output_transform`` of MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler``.

    Raises:
        ValueError: when the output holds no ``loss_key``, naming what it holds.
    """
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    if not isinstance(item, Mapping) or loss_key not in item:
        found = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
        raise ValueError(f"the engine's output holds no {loss_key!r}: got {found}.")
    return item[loss_key]
