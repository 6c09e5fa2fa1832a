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

__all__ = ["UndecollatedOutput"]


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
