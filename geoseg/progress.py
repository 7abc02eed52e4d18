"""Progress of long steps: a tqdm bar on a terminal, or periodic log lines in flows.

Every long stage (ingest, train, segment) takes ``progress``:

- ``True``: a tqdm bar on stderr (the CLI);
- ``False``: nothing;
- a logger (or a ``LoggerAdapter`` such as Prefect's run logger): one INFO line every
  :data:`LOG_EVERY_S` seconds while the step runs and one at the end, with the step, the
  count, the rate, the time left and the bar's postfix (the losses in training). A flow
  run's log then shows where a long step is, without a terminal; a short step logs once.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_EVERY_S", "LogBar", "Progress", "progress_bar"]

LOG_EVERY_S = 20.0  # under the 30 s a flow's log may stay silent, with slack for slow steps
Progress = bool | logging.Logger | logging.LoggerAdapter
_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:3.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"


class _Discard:
    """A file that drops what tqdm writes itself (the log line is the display)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogBar(tqdm):
    """A tqdm whose display is a log line, written at most every ``mininterval`` seconds.

    tqdm's monitor thread calls the display every ``maxinterval`` seconds too, so a step
    slower than that still logs while it runs.
    """

    def __init__(self, *args: Any, logger: logging.Logger | logging.LoggerAdapter, **kwargs: Any) -> None:
        self._logger = logger
        self._logged_n = -1
        self._closing = False
        kwargs.setdefault("mininterval", LOG_EVERY_S)
        kwargs.setdefault("maxinterval", LOG_EVERY_S)
        self._started = False
        super().__init__(*args, file=_Discard(), bar_format=_FORMAT, **kwargs)
        self._started = True

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self._started or (self._closing and self.n == self._logged_n):
            return True  # tqdm's "0/N" at the start, or its final display: already logged
        self._logged_n = self.n
        self._logger.info("%s", self.format_meter(**self.format_dict))
        return True

    def close(self) -> None:
        self._closing = True
        if not self.disable and self.n != self._logged_n:
            self.display()  # the final count, once
        super().close()


def progress_bar(progress: Progress, **kwargs: Any) -> tqdm:
    """A bar for ``progress`` (see the module docstring); ``kwargs`` are tqdm's (total, desc, unit...)."""
    if isinstance(progress, logging.Logger | logging.LoggerAdapter):
        return LogBar(logger=progress, **kwargs)
    disable = kwargs.pop("disable", False)
    return tqdm(disable=disable or not progress, **kwargs)
