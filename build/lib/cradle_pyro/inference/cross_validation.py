"""Cross-validated effects: choose settings on every seen cell, not on a tenth of them.

The validation criterion of :mod:`cradle_pyro.inference.selection` compares a model's
ATEs with the ATEs of the clean *validation* cells of seen conditions: cells
the model never saw, of conditions it did. With the default split that is
about a tenth of a condition's cells (ten on Norman), too few to tell most
settings apart. :func:`cross_validate` deals the seen cells (everything not
in ``test``) of each condition into ``folds`` folds; each fold in turn is the
validation split of a run trained on the others, so every seen cell validates
once and test cells are never touched. Compare settings fold by fold (the
folds depend only on ``seed``, so two settings see the same folds).

On Norman (five folds, three seeds; ``benchmarks/cross_validation.py``) the
cross-validated r put 50 epochs below 100 and the direct path's prior scale
3.0 above 1.0 on every seed; one validation split could not tell the two
scales apart.

Example
-------
>>> from cradle_pyro import simulate_screen
>>> from cradle_pyro.inference import TrainConfig
>>> adata = simulate_screen(400, 40, seed=0)
>>> table = cross_validate(adata, TrainConfig(epochs=1, progress=False), folds=2,
...                        data_kwargs=dict(doublets=False), num_draws=2, n_cells=16)
>>> list(table["fold"])
[0, 1]
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.errors import CradleInputError

from .selection import ValidationEffects
from .train import TrainConfig, fit

FOLD_COLUMN = "_cradle_fold_split"


def fold_split(split, conditions, fold: int, folds: int, seed: int = 0) -> np.ndarray:
    """Split labels for ``fold``: ``test`` stays ``test``; each condition's other cells are dealt
    at random (seeded) into ``folds`` folds, fold ``fold`` becomes ``val``, the rest ``train``.

    >>> labels = fold_split(np.array(["train"] * 4 + ["test"]), np.array(["A"] * 5), 0, 2)
    >>> sorted(labels[:4]), labels[4]
    (['train', 'train', 'val', 'val'], 'test')
    """
    split, conditions = np.asarray(split), np.asarray(conditions)
    rng = np.random.default_rng(seed)
    labels = np.where(split == "test", "test", "train").astype(object)
    for c in np.unique(conditions):
        seen = np.flatnonzero((conditions == c) & (split != "test"))
        labels[seen[rng.permutation(len(seen)) % folds == fold]] = "val"
    return labels


def cross_validate(adata: ad.AnnData, train_config: TrainConfig | None = None,
                   model_config: ModelConfig | None = None, *, folds: int = 5,
                   data_kwargs: dict | None = None, seed: int = 0, num_draws: int = 20,
                   n_cells: int = 200) -> pd.DataFrame:
    """Train one run per fold and score its ATEs against that fold's validation cells.

    Parameters
    ----------
    adata
        The screen; never modified.
    train_config, model_config
        The setting to score (defaults: ``TrainConfig()``, ``ModelConfig()``).
    data_kwargs
        :meth:`PerturbationData.from_anndata` arguments (``split`` chooses the
        test cells, which no fold touches; ``seed`` defaults to ``seed``).
    seed
        Deals the folds and seeds each fold's ATE draws.
    num_draws, n_cells
        Posterior draws and cells per draw of each fold's model ATEs.

    Returns
    -------
    pandas.DataFrame
        One row per fold: ``fold``, ``val_ate_mse`` (model against validation
        ATE, mean over conditions and genes), ``val_ate_r`` (Pearson r over
        genes, mean over conditions), ``val_ate_r_top`` (the same over each
        condition's 20 genes of largest validation ATE), ``val_conditions``,
        ``val_cells``.
    """
    if not isinstance(folds, int) or folds < 2:
        raise CradleInputError(f"folds={folds!r}: use an integer of at least 2")
    if not adata.obs_names.is_unique:  # the fold labels are placed by name
        raise CradleInputError("cross_validate needs unique obs_names; call adata.obs_names_make_unique()")
    kwargs = {"seed": seed, **(data_kwargs or {})}
    official = PerturbationData.from_anndata(adata, **kwargs)
    position = adata.obs_names.get_indexer(official.obs_names)
    obs = adata.obs.copy()
    rows = []
    for fold in range(folds):
        labels = np.full(adata.n_obs, "train", dtype=object)
        labels[position] = fold_split(official.split, official.conditions, fold, folds, seed)
        obs[FOLD_COLUMN] = labels
        fold_adata = ad.AnnData(X=adata.X, obs=obs, var=adata.var, layers=dict(adata.layers))
        data = PerturbationData.from_anndata(fold_adata, **{**kwargs, "split": FOLD_COLUMN})
        run = fit(data, train_config or TrainConfig(), model_config)
        val = ValidationEffects(data, num_draws=num_draws, n_cells=n_cells, seed=seed)
        rows.append({"fold": fold, **val.scores(run.model, run.guide),
                     "val_conditions": len(val.conditions),
                     "val_cells": int((data.split == "val").sum())})
    return pd.DataFrame(rows)


__all__ = ["cross_validate", "fold_split"]
