"""Model selection for effects: which training state to keep.

The ELBO measures how well cells are reconstructed, not how well effects are
estimated: on Norman the validation −ELBO is lowest around epoch 25 while the
accuracy of ATEs keeps improving long after. :func:`validation_ate_error`
measures effects directly, on validation cells of *seen* conditions only (the
held-out test conditions are never touched):

    error = mean over (condition, gene) of (model ATE − validation ATE)²

where the validation ATE is the mean perturbseq-normalised expression of a
condition's clean validation cells minus that of the clean control cells of
training and validation. The validation ATE is noisy, but its noise is
independent of the model, so the expected error is the model's squared error
plus a constant: minimising it selects the state with the most accurate
effects, shrinkage included (a correlation would not see shrinkage).

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(400, 40, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=2, select="ate", progress=False))
>>> "val_ate_error" in run.history
True
"""

from __future__ import annotations

import numpy as np

from .effects import clean_mask, condition_draws, perturbseq_normalise

SELECT = ("ate", "elbo", "last")


class ValidationEffects:
    """Validation ATEs of seen conditions, computed once; scores a model against them.

    Parameters
    ----------
    data
        The screen; conditions with at least ``min_cells`` clean validation
        cells are used.
    num_draws, n_cells, basal
        Posterior draws, cells per draw and where their basal states come from
        (:func:`~cradle_pyro.inference.effects.condition_draws`) for the model's ATEs.
    """

    def __init__(self, data, min_cells: int = 3, num_draws: int = 4, n_cells: int = 64,
                 seed: int = 0, basal: str = "abducted"):
        self.data, self.num_draws, self.n_cells, self.seed = data, num_draws, n_cells, seed
        self.basal, self.min_cells = basal, min_cells
        conds = np.asarray(data.conditions)
        clean = clean_mask(data)
        seen = (data.split == "train") | (data.split == "val")
        control = np.flatnonzero(clean & seen & (conds == data.control_label))
        base = perturbseq_normalise(data.counts[control]).mean(0) if len(control) else None
        self.conditions, rows = [], []
        for c in data.condition_names:
            idx = np.flatnonzero(clean & (data.split == "val") & (conds == c))
            if c == data.control_label or len(idx) < min_cells or base is None:
                continue
            self.conditions.append(c)
            rows.append(perturbseq_normalise(data.counts[idx]).mean(0) - base)
        self.observed = np.stack(rows) if rows else np.zeros((0, data.n_genes))

    def __bool__(self):
        return len(self.conditions) > 0

    def predictions(self, model, guide) -> np.ndarray:
        """The model's ATEs of :attr:`conditions` (rows aligned with :attr:`observed`)."""
        if not self:
            raise ValueError(
                "no seen condition has validation cells to score against (each needs at least "
                f"{self.min_cells} clean cells in the 'val' split); use a split with a larger "
                "validation share, e.g. PerturbationData.from_anndata(..., "
                "split_fractions=(0.8, 0.1, 0.1))")
        kw = dict(num_draws=self.num_draws, n_cells=self.n_cells, seed=self.seed, basal=self.basal)
        base = condition_draws(model, guide, self.data, self.data.control_label, **kw).mean(0)
        return np.stack([condition_draws(model, guide, self.data, c, **kw).mean(0) - base
                         for c in self.conditions])

    def error(self, model, guide) -> float:
        """Mean squared difference between model and validation ATEs."""
        return float(((self.predictions(model, guide) - self.observed) ** 2).mean())

    def scores(self, model, guide=None, predictions=None, top_k: int = 20) -> dict:
        """``val_ate_mse`` (as :meth:`error`), ``val_ate_r`` (Pearson r over genes, mean over
        conditions) and ``val_ate_r_top`` (the same over each condition's ``top_k`` genes of
        largest observed validation ATE) of the model's ATEs, or of given ``predictions``
        (rows: :attr:`conditions`)."""
        pred = self.predictions(model, guide) if predictions is None else np.asarray(predictions)
        r = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(pred, self.observed)])
        tops = [np.argsort(-np.abs(b))[:top_k] for b in self.observed]
        r_top = np.mean([np.corrcoef(a[t], b[t])[0, 1]
                         for a, b, t in zip(pred, self.observed, tops)])
        return {"val_ate_mse": float(((pred - self.observed) ** 2).mean()), "val_ate_r": float(r),
                "val_ate_r_top": float(r_top)}


def validation_ate_error(model, guide, data, **kwargs) -> float:
    """:meth:`ValidationEffects.error` in one call (see the module docstring)."""
    return ValidationEffects(data, **kwargs).error(model, guide)


__all__ = ["SELECT", "ValidationEffects", "validation_ate_error"]
