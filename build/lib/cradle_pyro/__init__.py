"""cradle-pyro, model side: data, QC, simulator, priors, likelihoods, networks, model, guides.

CRADLE-VAE (Baek et al., AAAI 2025) as explicit Pyro programs. The inference
side (training, objectives, interventions, diagnostics) lives in the
``inference`` package, which imports this one and never the reverse.
"""

import pyro as _pyro

# Several models live side by side (cradle vs sams, seeds as chains): each
# PyroModule must own its parameters instead of sharing Pyro's global param
# store by name, or two models' "log_dispersion" would be one tensor.
_pyro.settings.set(module_local_params=True)

from .data import Batch, PerturbationData, Reference
from .errors import CradleInputError
from .qc import QCThresholds, label_artifacts, qc_metrics
from .references import build_reference_profiles
from .config import ModelConfig
from .guides import BasalGuide, CombinedGuide, CorrelatedGuide, MaskGuide, MeanFieldGuide, make_guide
from .model import CradleModel
from .simulate import simulate_screen
from .simulate_large import simulate_large_screen
from .splits import make_split

__all__ = [
    "BasalGuide",
    "CombinedGuide",
    "MaskGuide",
    "CorrelatedGuide",
    "CradleModel",
    "MeanFieldGuide",
    "ModelConfig",
    "make_guide",
    "Batch",
    "CradleInputError",
    "PerturbationData",
    "QCThresholds",
    "Reference",
    "build_reference_profiles",
    "label_artifacts",
    "make_split",
    "qc_metrics",
    "simulate_large_screen",
    "simulate_screen",
]
__version__ = "0.1.0"
