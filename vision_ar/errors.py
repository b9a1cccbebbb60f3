"""Errors meant for people: each names the problem and the fix."""


class VisionARError(Exception):
    """Base class of every error vision-ar raises on purpose."""


class ConfigError(VisionARError, ValueError):
    """A setting, preset name, shape or argument that cannot work."""


class CheckpointError(VisionARError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class MissingFileError(VisionARError, FileNotFoundError):
    """A local file the user must provide (weights, data) is absent."""


class DataError(VisionARError, ValueError):
    """A data file (image, dataset archive, token cache) that is corrupt, truncated or stale."""


class EditNotice(UserWarning):
    """An edit that did something other than asked, and says so: a mask with nothing to generate (the input is
    returned) or with nothing known (plain generation)."""
