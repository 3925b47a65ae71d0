"""Typed exceptions of zsvss.

Every error that bad input can cause is a subclass of :class:`ZsvssError` with a one-line
message naming the input and the problem. The CLI turns them into exit code 2 and one line on
stderr; the API lets them propagate so callers can catch them by type.
"""

from __future__ import annotations

import errno
import os


class ZsvssError(Exception):
    """Base class of every error zsvss raises on purpose."""


class InputError(ZsvssError, ValueError):
    """An input (file, folder, array, mask) is not usable as given."""


class VideoNotFoundError(InputError, FileNotFoundError):
    """A video path that does not exist."""


class EmptyVideoError(InputError):
    """A folder or file that holds no frames."""


class VideoDecodeError(InputError):
    """A video file that cannot be decoded (corrupt, truncated, not a video)."""


class FrameSizeError(InputError):
    """Frames of mixed sizes, or frames too small for the feature grid."""


class UnsupportedImageError(InputError):
    """An image whose pixel format cannot be converted to 8-bit RGB safely."""


class LabelError(InputError):
    """A ground-truth or prediction mask of the wrong size or with ids outside the class range."""


class PredictionMissingError(InputError):
    """A prediction folder that lacks frames the ground truth has."""


class DatasetLayoutError(InputError):
    """A dataset root whose folder layout does not match the named format."""


class OutputOverlapError(InputError):
    """An output path that is, contains or lies inside one of the run's inputs."""


class PathError(ZsvssError, OSError):
    """A user path that cannot be used: missing, not a folder, no permission, read-only, full."""


class OutputLockedError(ZsvssError):
    """Another live zsvss run holds the lock of the same output."""


class ConfigError(ZsvssError, ValueError):
    """A configuration value that cannot work (e.g. K larger than the number of tokens)."""


class ModelNotFoundError(ZsvssError, FileNotFoundError):
    """No model weights where the user pointed, or nowhere zsvss looked."""


class IncompleteModelError(ModelNotFoundError):
    """A model folder or checkpoint that lacks a component the method needs."""


class MissingDependencyError(ZsvssError, ImportError):
    """An optional package needed for the requested feature is not installed."""


class InterruptedAfterPublish(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived while a finished run was being published: the new output is
    in place and complete; the interrupt is reported after it, not instead of it."""


class DeviceOutOfMemoryError(ZsvssError, RuntimeError):
    """The device ran out of memory; the message says which knobs reduce memory."""


_OS_PROBLEMS = {
    errno.ENOENT: "does not exist",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
}


def os_problem(err: OSError) -> str:
    """A few words for what an OSError means (errno first, then the system's message)."""
    if err.errno in _OS_PROBLEMS:
        return _OS_PROBLEMS[err.errno]
    return err.strerror or os.strerror(err.errno or 0) or type(err).__name__
