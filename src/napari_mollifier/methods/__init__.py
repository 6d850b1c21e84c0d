"""Rate-inference methods beyond the closed form: mollified networks and the autodiff-PINN baseline."""

from .base_models import BASE_MODELS, FourierMLP, RBFGrid, SmallCNN, make_base_model
from .network import DERIVATIVES_VIA, fit_network

__all__ = ["fit_network", "FourierMLP", "SmallCNN", "RBFGrid", "make_base_model", "BASE_MODELS", "DERIVATIVES_VIA"]
