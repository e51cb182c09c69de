"""Exceptions of sparkinfer.

Every error a user can cause derives from `UserError`: the CLI prints its message as one
line and exits with `exit_code`, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class SparkInferError(Exception):
    """Base class of every error raised by sparkinfer."""


class UserError(SparkInferError):
    """Bad input from the user: reported as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """The job configuration (YAML or flags) is invalid."""


class InputError(UserError):
    """An input raster is missing, unreadable or unsuitable."""


class ModelError(UserError):
    """The model cannot be loaded or is not usable for per-pixel inference."""


class OutputError(UserError):
    """The output folder cannot be used."""


class JobFailed(SparkInferError):
    """The Spark stage failed after the inputs were accepted."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message as one line of at most `limit` characters (its type if empty).
    One that only points at its cause (rasterio's failed reads: "Read failed. See previous
    exception for details.") gives its cause's message, GDAL's words, which the user never
    sees otherwise."""
    if exc.__cause__ is not None and "previous exception" in str(exc):
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
