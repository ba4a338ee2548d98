"""cradle-pyro, inference side: objectives, SVI training, interventions, metrics, diagnostics.

Imports :mod:`cradle_pyro` (the model side); never the reverse.
"""

from .artifacts import add_artifact_posterior, artifact_posterior
from .counterfactuals import cleaning_against_twins, counterfactual
from .cross_validation import cross_validate
from .effects import PosteriorATE, data_ate, model_ate, posterior_ate, sample_cells
from .embeddings import add_latents, latent_representation
from .ensembles import ensemble_ate, fit_ensemble
from .interventions import intervene
from .objective import CradleELBO, SiteScale, iwelbo
from .run_io import load_run, save_run
from .scoring import score_ates, summarise_scores
from .train import TrainConfig, TrainedRun, fit

__all__ = [
    "CradleELBO",
    "PosteriorATE",
    "add_artifact_posterior",
    "artifact_posterior",
    "add_latents",
    "latent_representation",
    "posterior_ate",
    "score_ates",
    "summarise_scores",
    "SiteScale",
    "TrainConfig",
    "TrainedRun",
    "cleaning_against_twins",
    "counterfactual",
    "cross_validate",
    "data_ate",
    "ensemble_ate",
    "fit",
    "fit_ensemble",
    "intervene",
    "iwelbo",
    "load_run",
    "model_ate",
    "sample_cells",
    "save_run",
]
