"""napari-mollifier: epigenetic reaction-rate maps from chromatin images with mollifier layers.

The compute core (this package without ``_napari``) imports neither Qt nor napari.
"""

from ._version import __version__
from .app.rerun import rerun
from .coefficients import estimate_coefficients
from .density import split_density
from .errors import MollifierInputError, MollifierMemoryError, MollifierOutputError, MollifierWarning, RunCancelled
from .fractions import intensities_to_fractions
from .io import load_result, read_image
from .models import MODELS, get_model
from .mollifier import Mollifier, derivatives
from .result import RateResult
from .solve import infer_rates

__all__ = [
    "__version__",
    "derivatives",
    "Mollifier",
    "infer_rates",
    "estimate_coefficients",
    "RateResult",
    "split_density",
    "intensities_to_fractions",
    "MODELS",
    "get_model",
    "MollifierInputError",
    "MollifierMemoryError",
    "MollifierOutputError",
    "MollifierWarning",
    "RunCancelled",
    "load_result",
    "read_image",
    "rerun",
]
