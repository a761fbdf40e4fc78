"""Exceptions with messages meant for the user (CLI prints them, napari shows them as notifications)."""


class MTMSDError(Exception):
    """Base class: the message names the file or value and what was expected."""


class InputError(MTMSDError, ValueError):
    """A file or value the user gave cannot be used as it is."""


class ModelFileError(MTMSDError, ValueError):
    """A model or classifier directory is missing, corrupt, truncated, of another format or mismatched."""


class DeviceError(MTMSDError, RuntimeError):
    """The requested compute device is unavailable or failed."""


class Cancelled(MTMSDError):
    """Raised inside long work when the user asked it to stop."""
