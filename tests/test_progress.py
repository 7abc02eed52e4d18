"""Progress of long steps: tqdm bars on a terminal, periodic log lines in flows."""

from __future__ import annotations

import io
import logging
import re
import time

import pytest
from tqdm import tqdm

from geoseg.progress import LOG_EVERY_S, LogBar, progress_bar


def _logger(name: str) -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"test-progress.{name}")
    logger.handlers[:] = [Collect()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, lines


def test_a_short_step_logs_one_final_line() -> None:
    logger, lines = _logger("short")
    with progress_bar(logger, total=5, desc="segment a.tif", unit="win") as bar:
        for _ in range(5):
            bar.update(1)
    assert len(lines) == 1
    assert lines[0].startswith("segment a.tif: 5/5 win (100%)") and "ETA 00:00" in lines[0]


def test_a_long_step_logs_while_it_runs_with_count_eta_and_losses() -> None:
    logger, lines = _logger("long")
    bar = LogBar(logger=logger, total=6, desc="train", unit="step", mininterval=0.05, maxinterval=0.05)
    for step in range(6):
        time.sleep(0.08)
        bar.set_postfix({"loss_b": f"{-0.1 * step:.4f}"}, refresh=False)  # as training does
        bar.update(1)
    bar.close()
    during = [line for line in lines if not line.startswith("train: 6/6")]
    assert len(during) >= 2  # during the step, not only at its end
    assert all(re.match(r"train: [0-5]/6 step \(.*\), .*, elapsed \d\d:\d\d, ETA ", line) for line in during)
    assert lines[-1].startswith("train: 6/6 step (100%)") and "loss_b=-0.5000" in lines[-1]
    assert sum(line.startswith("train: 6/6") for line in lines) == 1  # the final line once


def test_a_step_slower_than_the_interval_still_logs_while_it_runs() -> None:
    logger, lines = _logger("slow")
    bar = LogBar(logger=logger, total=1, desc="ingest s.zarr", unit="shard", mininterval=0.1)
    time.sleep(0.45)  # one shard, no update meanwhile
    during = list(lines)
    bar.update(1)
    bar.close()
    assert len(during) >= 2 and all(line.startswith("ingest s.zarr: 0/1 shard") for line in during)
    assert lines[-1].startswith("ingest s.zarr: 1/1 shard (100%)")


def test_flows_log_at_least_every_30_seconds() -> None:
    assert LOG_EVERY_S < 30


def test_progress_true_is_a_terminal_bar_and_false_shows_nothing() -> None:
    out = io.StringIO()
    with progress_bar(True, total=3, desc="ingest", unit="shard", file=out, mininterval=0) as bar:
        bar.update(3)
    assert type(bar) is tqdm and "ingest: 100%" in out.getvalue() and "3/3" in out.getvalue()
    quiet = io.StringIO()
    with progress_bar(False, total=3, desc="ingest", file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("progress", [True, False])
def test_a_disabled_bar_stays_disabled(progress: bool) -> None:
    """Training disables the bar on every rank but the first, whatever ``progress`` says."""
    out = io.StringIO()
    bar = progress_bar(progress, total=2, file=out, disable=True)
    bar.update(2)
    bar.close()
    assert bar.disable and out.getvalue() == ""
