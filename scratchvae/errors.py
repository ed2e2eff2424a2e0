"""Exceptions raised for bad input, bad files and bad configuration.

Every error raised on purpose by scratchvae derives from :class:`ScratchVAEError`, so the
command line can print its message as one line and exit non-zero, while anything else
(a bug) keeps its traceback. Each message names the argument or file, what was expected
and what came.
"""


class ScratchVAEError(Exception):
    """Base class of the errors scratchvae raises on purpose."""


class InputError(ScratchVAEError, ValueError):
    """An array or argument handed to the library is not what it must be."""


class BackendError(ScratchVAEError, TypeError):
    """Arrays from different backends were mixed, or a backend is not usable."""


class DataError(ScratchVAEError, ValueError):
    """A data file is missing, malformed or fails its checksum."""


class DownloadError(DataError):
    """A dataset could not be fetched from any mirror (or downloads are disabled)."""


class ChecksumError(DataError):
    """A file's SHA-256 does not match the expected value."""


class CheckpointError(ScratchVAEError, ValueError):
    """A checkpoint is unreadable, incomplete, too new, or does not match the model."""


class NonFiniteError(ScratchVAEError, FloatingPointError):
    """Training produced a non-finite loss."""
