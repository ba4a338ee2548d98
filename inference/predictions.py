"""Predicted and observed cells in the layout the field's scorers read.

Arc Institute's ``cell-eval`` (``cell-eval run -ap predicted.h5ad -ar
observed.h5ad``) compares a predicted AnnData with an observed one: one obs
column names each cell's perturbation (``target_gene``), the control cells
are labelled ``non-targeting``, and ``X`` holds log1p-normalised expression
(``log(1 + 10⁴·x / Σx)``, scanpy's ``normalize_total`` + ``log1p``). This
module writes all three sides in that layout, so ``cradle`` and the
baselines are scored by the same outside code on equal terms:

- :func:`predicted_cells`: a model's generated clean cells, ``n`` per
  condition, under ``do(dosage=condition, artifact=clean)``, with its own
  generated control cells;
- :func:`baseline_cells`: a baseline's ATE table
  (:mod:`cradle_pyro.inference.baselines`) added to training control cells,
  which also stand for its control;
- :func:`observed_cells`: the truth, the held-out clean cells of each
  condition and the held-out clean control cells: no cell any predictor
  trained on.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference.baselines import baseline_ates
>>> data = PerturbationData.from_anndata(simulate_screen(600, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> combos = [c for c in data.condition_names if "+" in c and (data.conditions[data.split == "test"] == c).any()]
>>> real = observed_cells(data, combos)
>>> pred = baseline_cells(data, baseline_ates(data, combos)["additive"], n=50)
>>> sorted(set(pred.obs["target_gene"])) == sorted(combos + ["non-targeting"])
True
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .baselines import training_cells
from .effects import sample_cells
from .scoring import clean_cells

PERT_COL = "target_gene"
CONTROL = "non-targeting"
LOG2 = np.log(2.0)


def log1p_normalise(counts) -> np.ndarray:
    """``log(1 + 10⁴·x / Σx)`` per cell."""
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=float)
    return np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1)).astype(np.float32)


def _layout(blocks: list, labels: list, data, source: str) -> ad.AnnData:
    """Stack per-condition blocks of log1p-normalised cells into the scorer's layout."""
    X = np.concatenate(blocks) if blocks else np.zeros((0, data.n_genes), dtype=np.float32)
    label = np.concatenate([[CONTROL if c == data.control_label else c] * len(b)
                            for b, c in zip(blocks, labels)])
    obs = pd.DataFrame({PERT_COL: pd.Categorical(label),
                        "condition": pd.Categorical(np.concatenate(
                            [[c] * len(b) for b, c in zip(blocks, labels)]))},
                       index=[f"{source}_{i}" for i in range(len(X))])
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(data.gene_names)))
    out.uns["cradle_pyro"] = {"source": source, "normalisation": "log1p(1e4 * x / sum(x))",
                              "control_label": data.control_label}
    return out


def _with_control(conditions, data) -> list:
    return [c for c in conditions if c != data.control_label] + [data.control_label]


def predicted_cells(model, guide, data, conditions, *, n: int = 200, seed: int = 0,
                    name: str = "model") -> ad.AnnData:
    """``n`` generated clean cells per condition (and the control), log1p-normalised, in the
    scorer's layout (:data:`PERT_COL`, :data:`CONTROL`); obs ``condition`` keeps the label."""
    blocks, labels = [], _with_control(conditions, data)
    for i, c in enumerate(labels):
        cells = sample_cells(model, guide, data, c, n=n, artifact="clean", seed=seed + i)
        blocks.append(log1p_normalise(cells.X))
    return _layout(blocks, labels, data, name)


def baseline_cells(data, ate: pd.DataFrame, *, split: str = "test", n: int = 200,
                   seed: int = 0, name: str = "baseline") -> ad.AnnData:
    """Cells of a baseline: ``n`` clean training control cells per condition, each moved by
    the baseline's ATE (a log2(1 + CP10k) table, :mod:`~cradle_pyro.inference.baselines`),
    floored at zero expression; the same cells unmoved are its control."""
    from .effects import perturbseq_normalise

    rng = np.random.default_rng(seed)
    control = perturbseq_normalise(data.counts[training_cells(data, data.control_label, split)])
    blocks, labels = [], _with_control(list(ate.index), data)
    for c in labels:
        base = control[rng.choice(len(control), n, replace=len(control) < n)]
        moved = base if c == data.control_label else np.clip(base + ate.loc[c].to_numpy(), 0, None)
        blocks.append((moved * LOG2).astype(np.float32))   # log2(1 + y) · ln 2 = ln(1 + y)
    return _layout(blocks, labels, data, name)


def observed_cells(data, conditions, *, split: str = "test") -> ad.AnnData:
    """The held-out clean cells of each condition and the held-out clean control cells,
    log1p-normalised, in the scorer's layout: the truth no predictor trained on."""
    blocks, labels = [], []
    for c in _with_control(conditions, data):
        idx = clean_cells(data, c, split=split)
        if len(idx):
            blocks.append(log1p_normalise(data.counts[idx]))
            labels.append(c)
    if data.control_label not in labels:
        from cradle_pyro.errors import CradleInputError

        raise CradleInputError(f"no clean control cell in split {split!r} to compare against; "
                               "split with heldout_control_fraction > 0")
    return _layout(blocks, labels, data, "observed")


__all__ = ["CONTROL", "PERT_COL", "baseline_cells", "log1p_normalise", "observed_cells",
           "predicted_cells"]
