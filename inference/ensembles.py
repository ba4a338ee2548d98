"""Ensembles of independently trained runs: an equal mixture of their posteriors.

A variational guide finds one mode of the posterior and, being mean-field
over the globals, understates the spread around it; two trainings of the same
model on the same cells from different seeds end in different places (on
Norman, the held-out ATEs of two seeds correlate 0.84–0.98). An ensemble of
``K`` runs treats each run's guide as one component of the posterior
approximation

    q(globals) = (1 / K) Σ_k q_k(globals),

with each component's decoder (a point estimate) beside it. A posterior ATE
over the ensemble draws ``num_draws / K`` draws from each member and stacks
them: the posterior mean is the members' average, and the credible interval
also covers where the members disagree. Members differ only in their training
seed; data, split and settings are shared.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> data = PerturbationData.from_anndata(simulate_screen(300, 40, seed=0), doublets=False)
>>> runs = fit_ensemble(data, TrainConfig(epochs=1, progress=False), members=2)
>>> post = ensemble_ate(runs, data, ["P0"], num_draws=20, n_cells=20)
>>> post.draws.shape, [r.train_config.seed for r in runs]
((1, 20, 40), [0, 1])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .effects import NUM_DRAWS, PosteriorATE, posterior_ate
from .train import TrainConfig, fit


def fit_ensemble(data, train_config: TrainConfig | None = None, model_config=None,
                 members: int = 3, first=None, bootstrap: bool = False) -> list:
    """Train ``members`` runs that differ in their seed (``seed``, ``seed + 1``, …).

    Returns the list of :class:`~cradle_pyro.inference.train.TrainedRun`; the first member is
    exactly what :func:`~cradle_pyro.inference.train.fit` with ``train_config`` returns, or
    ``first`` when that run is already trained.

    With ``bootstrap=True`` (or ``train_config.bootstrap``) every member trains on its own
    bootstrap replicate of the training cells (:attr:`TrainConfig.bootstrap
    <cradle_pyro.inference.train.TrainConfig>`, seeded by the member's seed), and the mixture
    is the bagged posterior (BayesBag: Bühlmann 2014; Huggins & Miller 2023): what one run's
    guide leaves out, chiefly that the decoder is a point estimate, enters as the spread between
    members. Measured by SBC (``benchmarks/sbc.py``): 90 % coverage 0.72–0.77 for one run,
    0.81–0.86 with three bootstrap members, 0.85–0.91 with five. ``first`` is used only when
    it was trained the same way (its ``train_config.bootstrap`` equals the members').
    """
    if members < 1:
        raise ValueError(f"members={members}; an ensemble needs at least one run")
    tc = train_config or TrainConfig()
    tc = replace(tc, bootstrap=tc.bootstrap or bootstrap)

    def member(k):
        return fit(data, replace(tc, seed=tc.seed + k), model_config)

    usable = first is not None and first.train_config.bootstrap == tc.bootstrap
    runs = [first if usable else member(0)]
    return runs + [member(k) for k in range(1, members)]


def ensemble_ate(runs, data, perturbations, *, num_draws: int = NUM_DRAWS, seed: int = 0,
                 interval: float = 0.9, estimator=posterior_ate, **kwargs) -> PosteriorATE:
    """Posterior ATEs under the equal mixture of the runs' posteriors.

    ``num_draws`` are shared out as evenly as the members allow (at least one
    each); member ``k`` uses posterior seed ``seed + k``. Other keywords
    (``n_cells``, ``artifact``, ``basal``) go to ``estimator`` for every member:
    :func:`~cradle_pyro.inference.effects.posterior_ate` (default), or
    :func:`~cradle_pyro.inference.screen_queries.batched_ate` for many perturbations.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("ensemble_ate needs at least one run")
    if num_draws < len(runs):
        raise ValueError(f"num_draws={num_draws} is fewer than the {len(runs)} members; "
                         "give each member at least one draw")
    shares = np.diff(np.linspace(0, num_draws, len(runs) + 1).round().astype(int))
    parts = [estimator(run.model, run.guide, data, perturbations, num_draws=int(n),
                       seed=seed + k, interval=interval, **kwargs)
             for k, (run, n) in enumerate(zip(runs, shares))]
    if len(parts) == 1:
        return parts[0]
    return PosteriorATE(np.concatenate([p.draws for p in parts], axis=1), list(perturbations),
                        list(data.gene_names), interval)


__all__ = ["ensemble_ate", "fit_ensemble"]
