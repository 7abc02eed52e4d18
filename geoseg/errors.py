"""Errors that geoseg raises for bad input; the CLI turns them into clear messages."""

from __future__ import annotations

__all__ = ["BusyError", "ConfigError", "GeosegError", "InputError", "OutputError", "TrainingError"]


class GeosegError(Exception):
    """Base class: a problem the user can fix (bad input, bad parameters)."""


class InputError(GeosegError):
    """An input file is missing, unreadable, corrupt or unsuitable."""


class ConfigError(GeosegError):
    """A parameter is out of range or inconsistent with the data."""


class TrainingError(GeosegError):
    """Training cannot go on (e.g. the loss became NaN or inf)."""


class OutputError(GeosegError):
    """An output location cannot be used: a foreign file or folder, unwritable, no space."""


class BusyError(GeosegError):
    """Another process holds the lock of a store or output folder."""
