"""Rate-inference methods beyond the closed form: mollified networks and the autodiff-PINN baseline."""

from .base_models import BASE_MODELS, FourierMLP, RBFGrid, SmallCNN, make_base_model
from .network import (
                      DEFAULT_ITERATIONS,
                      DERIVATIVES_VIA,
                      NetworkFit,
                      evaluate_network,
                      fit_network,
                      setup_network,
                      train_network,
)

__all__ = ["fit_network", "setup_network", "train_network", "evaluate_network", "NetworkFit", "DEFAULT_ITERATIONS",
           "FourierMLP", "SmallCNN", "RBFGrid", "make_base_model", "BASE_MODELS", "DERIVATIVES_VIA"]
