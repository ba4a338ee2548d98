"""Simple predictors every score is shown beside, built from training cells only.

A deep model's effect prediction means little until it beats what a
one-line rule gets from the same cells (Ahlmann-Eltze et al., *Nature
Methods* 2025). Each baseline here predicts ATEs (conditions × genes, on the
log1p(CP10k) scale of the truth) from the clean cells **outside** the scored
split, the cells the models could train on, and never from a held-out cell:

- ``additive``: the sum of the targets' training effects,
  ``Σ_t (mean(t) − mean(control))``; for a condition seen in training, its own
  training effect;
- ``mean``: the mean of all perturbed training cells minus the control mean,
  one vector for every condition;
- ``no_change``: zero (scores only where a score does not divide by the
  prediction's spread: R² and error, not r);
- ``linear``: ridge regression of the training conditions' effects on their
  target indicators, ``effect ≈ dosage @ W + b``, the penalty chosen by
  efficient leave-one-condition-out cross-validation (scikit-learn's
  ``RidgeCV``) over the training conditions; seen combinations teach it how
  pairs depart from the sum, the intercept how every perturbation moves
  the cells alike. It is the linear baseline of Ahlmann-Eltze et al. in the
  form their combination benchmark allows: no gene or perturbation embedding
  from outside the screen.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> data = PerturbationData.from_anndata(simulate_screen(600, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> combos = [c for c in data.condition_names if "+" in c and (data.conditions[data.split == "test"] == c).any()]
>>> tables = baseline_ates(data, combos)
>>> sorted(tables), tables["linear"].shape == (len(combos), data.n_genes)
(['additive', 'linear', 'mean', 'no_change'], True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cradle_pyro.splits import targets_of

from .effects import clean_mask
from .scoring import _mean_expression as _mean
from .scoring import clean_cells

BASELINES = ("additive", "mean", "no_change", "linear")
RIDGE_ALPHAS = np.logspace(-2, 4, 13)


def training_cells(data, condition, split: str = "test") -> np.ndarray:
    """Indices of the clean cells of ``condition`` outside ``split``."""
    return clean_cells(data, condition, exclude_split=split)


def training_effects(data, split: str = "test") -> pd.DataFrame:
    """Each perturbed condition's training effect, ``mean(condition) − mean(control)``, on
    clean cells outside ``split`` (conditions without such cells are left out)."""
    control = _mean(data, training_cells(data, data.control_label, split))
    rows = {}
    for c in data.condition_names:
        idx = training_cells(data, c, split) if c != data.control_label else []
        if len(idx):
            rows[c] = _mean(data, idx) - control
    return pd.DataFrame.from_dict(rows, orient="index", columns=data.gene_names)


def baseline_ates(data, perturbations, *, split: str = "test", kinds=BASELINES) -> dict:
    """Baseline name → ATE table (``perturbations`` × genes), from cells outside ``split``.

    A baseline that cannot predict a condition (``additive`` when a target has
    no training cells) leaves its row out.
    """
    effects = training_effects(data, split)
    if effects.empty:
        raise ValueError(f"no perturbed clean cell outside split {split!r} to build baselines from")
    builders = {"additive": _additive, "mean": _perturbed_mean, "no_change": _no_change,
                "linear": _linear}
    unknown = sorted(set(kinds) - set(builders))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    return {k: builders[k](data, list(perturbations), effects, split) for k in kinds}


def _additive(data, perts, effects, split) -> pd.DataFrame:
    rows = {}
    for p in perts:
        if p in effects.index and data.separator not in p:
            rows[p] = effects.loc[p].to_numpy()
            continue
        targets = targets_of(p, data.control_label, data.separator)
        if targets and all(t in effects.index for t in targets):
            rows[p] = sum(effects.loc[t].to_numpy() for t in targets)
    return pd.DataFrame.from_dict(rows, orient="index", columns=data.gene_names)


def _perturbed_mean(data, perts, effects, split) -> pd.DataFrame:
    perturbed = np.flatnonzero((np.asarray(data.conditions) != data.control_label)
                               & clean_mask(data) & (data.split != split))
    control = _mean(data, training_cells(data, data.control_label, split))
    vector = _mean(data, perturbed) - control
    return pd.DataFrame(np.tile(vector, (len(perts), 1)), index=perts, columns=data.gene_names)


def _no_change(data, perts, effects, split) -> pd.DataFrame:
    return pd.DataFrame(0.0, index=perts, columns=data.gene_names)


def _linear(data, perts, effects, split) -> pd.DataFrame:
    from sklearn.linear_model import RidgeCV

    code = {c: i for i, c in enumerate(data.condition_names)}
    design = lambda conds: data.condition_dosage[[code[c] for c in conds]]
    fit = RidgeCV(alphas=RIDGE_ALPHAS, fit_intercept=True)
    fit.fit(design(effects.index), effects.to_numpy())
    known = [p for p in perts if p in code]
    return pd.DataFrame(fit.predict(design(known)), index=known, columns=data.gene_names)


__all__ = ["BASELINES", "baseline_ates", "training_cells", "training_effects"]
