"""The napari dock widgets. Qt lives only here; the core modules know nothing of it."""

from ._main import MTMSDWidget

__all__ = ["MTMSDWidget"]
