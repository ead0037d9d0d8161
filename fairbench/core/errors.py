"""Errors that reach the user as one clear line (exit code 2, no traceback)."""

from __future__ import annotations


class FairbenchError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message is one line naming the problem and, where possible, the fix. The CLI prints it
    as ``error: <message>`` and exits with code 2.
    """


class UnknownNameError(FairbenchError, KeyError):
    """An unknown method, dataset, backbone or parameter name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ParamError(FairbenchError, ValueError):
    """A parameter value that is malformed, mistyped or out of range."""


class DataError(FairbenchError):
    """Missing, unreadable or inconsistent data (files, rows, attribute values, splits)."""


class PluginError(FairbenchError):
    """A plugin (entry point or local file) that could not be loaded."""


class CurvatureError(FairbenchError):
    """The backbone cannot be handled by BackPACK with the chosen estimator."""


class TrainingDiverged(FairbenchError):
    """The loss or the model's outputs became non-finite (NaN or inf): the settings (often the
    learning rate) make training diverge. A run that raises it is recorded as failed."""

    def __init__(self, message: str, *, stage: str = "", epoch: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.epoch = epoch
