"""Progress messages of long work (evaluation, calibration, preparation) through ``logging``.

A bundle run by ``python -m monai.bundle run`` applies its ``configs/logging.conf``, which routes the ``calibmonai``
loggers; where nothing configured logging (a plain Python session), the message is printed so progress is never
silent.
"""

from __future__ import annotations

import logging

__all__ = ["progress"]


def progress(message: str, name: str = "calibmonai") -> None:
    """Report ``message`` on logger ``name`` at INFO level, or print it when no logging handler is configured."""
    logger = logging.getLogger(name)
    if logger.hasHandlers():
        logger.info(message)
    else:
        print(message, flush=True)
