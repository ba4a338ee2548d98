"""cradle-pyro, inference side: objectives, SVI training, interventions, metrics, diagnostics.

Imports :mod:`cradle_pyro` (the model side); never the reverse.
"""

from .objective import CradleELBO, SiteScale, iwelbo
from .train import TrainConfig, TrainedRun, fit

__all__ = ["CradleELBO", "SiteScale", "TrainConfig", "TrainedRun", "fit", "iwelbo"]
