"""napari-mollifier: epigenetic reaction-rate maps from chromatin images with mollifier layers.

The compute core (this package without ``_napari``) imports neither Qt nor napari.
"""

from ._version import __version__
from .errors import MollifierInputError, RunCancelled
from .mollifier import Mollifier, derivatives

__all__ = ["__version__", "derivatives", "Mollifier", "MollifierInputError", "RunCancelled"]
