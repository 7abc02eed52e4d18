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
import threading
import time
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_EVERY_S", "LogBar", "Progress", "progress_bar"]

LOG_EVERY_S = 25.0  # a flow's log stays silent under 30 s; fewer lines keep the demo on a screen
Progress = bool | logging.Logger | logging.LoggerAdapter
_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:3.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"


class _Discard:
    """A file that drops what tqdm writes itself (the log line is the display)."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogBar(tqdm):
    """A tqdm whose display is a log line: at most every ``mininterval`` seconds on updates,
    and from a heartbeat thread when a single step takes longer than that (a slow shard or
    training step still shows the elapsed time)."""

    def __init__(self, *args: Any, logger: logging.Logger | logging.LoggerAdapter, **kwargs: Any) -> None:
        self._logger = logger
        self._logged_n = -1
        self._logged_at = time.monotonic()
        self._closing = False
        self._started = False
        kwargs.setdefault("mininterval", LOG_EVERY_S)
        kwargs.setdefault("maxinterval", kwargs["mininterval"])
        super().__init__(*args, file=_Discard(), bar_format=_FORMAT, **kwargs)
        self._started = True
        self._stop = threading.Event()
        if not self.disable:
            threading.Thread(target=self._heartbeat, name="geoseg-progress", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.mininterval / 4)):
            if time.monotonic() - self._logged_at >= self.mininterval:
                self.display()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self._started or (self._closing and self.n == self._logged_n):
            return True  # tqdm's "0/N" at the start, or its final display: already logged
        self._logged_n, self._logged_at = self.n, time.monotonic()
        # Displays from the heartbeat or tqdm's monitor thread bypass update(): the next
        # line then waits a full interval from this one, not from update()'s last.
        self.last_print_n, self.last_print_t = self.n, self._time()
        self._logger.info("%s", self.format_meter(**self.format_dict))
        return True

    def close(self) -> None:
        self._closing = True
        if not self.disable:
            self._stop.set()
            if self.n != self._logged_n:
                self.display()  # the final count, once
        super().close()


def progress_bar(progress: Progress, **kwargs: Any) -> tqdm:
    """A bar for ``progress`` (see the module docstring); ``kwargs`` are tqdm's (total, desc, unit...)."""
    if isinstance(progress, logging.Logger | logging.LoggerAdapter):
        return LogBar(logger=progress, **kwargs)
    disable = kwargs.pop("disable", False)
    return tqdm(disable=disable or not progress, **kwargs)
