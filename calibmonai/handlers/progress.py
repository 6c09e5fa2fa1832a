"""Progress handlers: the mean training loss of each epoch through ``logging``, and an optional TensorBoard writer."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

__all__ = ["EpochLossLogger", "tensorboard_stats_handler", "DisabledHandler"]


class EpochLossLogger:
    """Log the mean of ``engine.state.output[loss_key]`` over each epoch (``logging``, logger ``calibmonai``), so
    a training run reports its loss at least once per epoch whatever the iteration-log interval.

    An epoch in which the data loader gives no batch at all (every item failed in the loader's threads, an empty
    training split) stops the run with a ``RuntimeError`` before the epoch's validation and checkpointing (the
    check is the first handler of the trainer's ``EPOCH_COMPLETED``): otherwise the untrained network would be
    validated and saved as the best model.

    Args:
        loss_key: key of the loss in the engine's output dictionaries (MONAI trainers: ``"loss"``).
        logger_name: name of the ``logging`` logger (a bundle's ``logging.conf`` routes it).
    """

    def __init__(self, loss_key: str = "loss", logger_name: str = "calibmonai") -> None:
        self.loss_key = loss_key
        self.logger = logging.getLogger(logger_name)
        self._sum = 0.0
        self._count = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_not_empty)
        # first among the epoch's handlers, whatever the order of the config's list (ValidationHandler comes first
        # there); ignite has no public priority, so the handler is moved to the front of its list when it can be
        handlers = getattr(engine, "_event_handlers", {}).get(Events.EPOCH_COMPLETED)
        if isinstance(handlers, list) and handlers:
            handlers.insert(0, handlers.pop())
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _reset(self, engine: Any) -> None:
        self._sum, self._count = 0.0, 0
        self._first_iteration = getattr(engine.state, "iteration", 0)

    def _check_not_empty(self, engine: Any) -> None:
        if engine.state.iteration == getattr(self, "_first_iteration", -1):
            raise RuntimeError(
                f"epoch {engine.state.epoch} ran no training iteration: the training data loader gave no batch (see the "
                "loader's errors above, e.g. an image and label of different sizes, or an empty training split); "
                "stopped before validating and saving an untrained network."
            )

    def _accumulate(self, engine: Any) -> None:
        outputs = engine.state.output
        for out in outputs if isinstance(outputs, list) else [outputs]:
            if isinstance(out, dict) and self.loss_key in out:
                loss = out[self.loss_key]
                # a tensor stays where it is (no host synchronisation per iteration on a GPU): read at the epoch's end
                self._sum = self._sum + (loss.detach().double().sum() if isinstance(loss, torch.Tensor) else float(loss))
                self._count += 1
                break

    def _log(self, engine: Any) -> None:
        from calibmonai.progress import progress

        mean = float(self._sum) / self._count if self._count else float("nan")
        progress(f"epoch {engine.state.epoch}/{engine.state.max_epochs}: mean training loss {mean:.4f} over {self._count} iteration(s)", self.logger.name)


class DisabledHandler:
    """A handler that attaches nothing (an optional handler switched off in a config)."""

    def attach(self, engine: Any) -> None:
        return None


def tensorboard_stats_handler(enabled: Any, log_dir: str, **kwargs: Any) -> Any:
    """MONAI's ``TensorBoardStatsHandler(log_dir=log_dir, **kwargs)`` when ``enabled`` (a config switch, e.g.
    ``--tensorboard true``), otherwise a handler that does nothing; the TensorBoard writer is only created when
    enabled, so the ``tensorboard`` package is needed only then."""
    from calibmonai.bundle_tools import as_bool

    if not as_bool(enabled, "tensorboard"):
        return DisabledHandler()
    from monai.handlers import TensorBoardStatsHandler

    return TensorBoardStatsHandler(log_dir=log_dir, **kwargs)
