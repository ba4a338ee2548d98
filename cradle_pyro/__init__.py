"""cradle-pyro, model side: data, QC, simulator, priors, likelihoods, networks, model, guides.

CRADLE-VAE (Baek et al., AAAI 2025) as explicit Pyro programs. The inference
side (training, objectives, interventions, diagnostics) lives in the
``inference`` package, which imports this one and never the reverse.
"""

from .data import Batch, PerturbationData, Reference
from .errors import CradleInputError
from .qc import QCThresholds, label_artifacts, qc_metrics
from .references import build_reference_profiles
from .simulate import simulate_screen
from .splits import make_split

__all__ = [
    "Batch",
    "CradleInputError",
    "PerturbationData",
    "QCThresholds",
    "Reference",
    "build_reference_profiles",
    "label_artifacts",
    "make_split",
    "qc_metrics",
    "simulate_screen",
]
__version__ = "0.1.0"
