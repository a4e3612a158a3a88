"""Errors a user can cause. Jobs print ``error: <message>`` and exit with ``EXIT_USAGE``."""

EXIT_USAGE = 2
"""Exit code for bad input: flags, config, data files, checkpoints, cluster layout."""
EXIT_BELOW_THRESHOLD = 3
"""Exit code of the evaluation job when accuracy is below ``--min-accuracy``."""


class MnistRayError(Exception):
    """Base class: a problem the user can fix, reported as one line."""


class ConfigError(MnistRayError, ValueError):
    """An invalid configuration value or combination."""


class DataError(MnistRayError):
    """A dataset file is missing, corrupt, truncated or inconsistent."""


class CheckpointError(MnistRayError):
    """A checkpoint is missing, corrupt, or does not match what was asked for."""


class ResourceError(MnistRayError):
    """The requested layout does not fit the Ray cluster."""
