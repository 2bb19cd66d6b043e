"""The one small error hierarchy of medjax.

Raise these where the fact is known. Each message names the file, case id or config key and
says what is wrong with it, so a user can fix the input without reading a traceback.
"""


class MedjaxError(Exception):
    """Base class of every error medjax raises on purpose."""


class ConfigError(MedjaxError, KeyError):
    """A config key or registry name is unknown or has an invalid value.

    Subclasses ``KeyError`` so callers that expect a missing-key error still catch it, but
    overrides ``__str__`` because ``KeyError`` would quote the whole message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataError(MedjaxError, ValueError):
    """An input file or case is missing, corrupt, or disagrees with its partner."""


class CheckpointError(MedjaxError, RuntimeError):
    """A checkpoint cannot be found, restored, or does not match the model."""


class TrainingError(MedjaxError, FloatingPointError):
    """Training diverged (a non-finite loss or gradient norm)."""
