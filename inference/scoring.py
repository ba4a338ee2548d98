"""Scoring predicted ATEs against the data, as a sceptical reviewer would.

Three rules (DESIGN.md, evaluation vocabulary):

- **Clean truth.** The observed ATE of a condition uses its clean cells of the
  scored split minus clean control cells: artifact cells are not the effect of
  a perturbation.
- **No shared noise.** The additive baseline ``mean(A) + mean(B) − 2·control``
  and the truth ``mean(AB) − control`` must not use the same control cells, or
  control noise alone correlates them. Each of ``n_splits`` random splits
  halves the clean control cells: the truth uses one half, the baseline the
  other. Every predictor (models included) is scored against the same
  half-control truths and its scores are averaged over the splits, so all rows
  of a table face the same truth noise.
- **A ceiling beside every score.** The truth's split-half reliability: the
  condition's cells and the control cells are both halved, the two half-truths
  correlated, and the correlation Spearman-Brown corrected
  (``2r / (1 + r)``) to the full number of cells. A predictor near it is done.

Top-k genes are fixed per condition from the full clean truth (all clean
control cells), once, and used by every predictor and by the ceiling.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> data = PerturbationData.from_anndata(simulate_screen(600, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> combos = [c for c in held_out_conditions(data) if "+" in c]
>>> table = score_ates({}, data, combos, n_splits=5)
>>> sorted(table["predictor"].unique())
['additive', 'ceiling']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cradle_pyro.splits import targets_of

from .effects import clean_mask, perturbseq_normalise

SCORE_COLUMNS = ["pearson_all", "pearson_top", "r2_all", "r2_top", "jaccard_top", "slope_top"]


def held_out_conditions(data, split: str = "test") -> list:
    """Conditions with cells in ``split`` (control excluded)."""
    conds = np.asarray(data.conditions)
    return [c for c in data.condition_names
            if c != data.control_label and ((data.split == split) & (conds == c)).any()]


def clean_cells(data, condition, split=None, exclude_split=None) -> np.ndarray:
    """Indices of clean cells of ``condition`` (optionally in / not in a split)."""
    keep = (np.asarray(data.conditions) == condition) & clean_mask(data)
    if split is not None:
        keep &= data.split == split
    if exclude_split is not None:
        keep &= data.split != exclude_split
    return np.flatnonzero(keep)


def _mean_expression(data, idx) -> np.ndarray:
    return perturbseq_normalise(data.counts[idx]).mean(0)


def _pearson(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _r2(pred, true) -> float:
    ss = ((true - true.mean()) ** 2).sum()
    return float(1 - ((pred - true) ** 2).sum() / ss) if ss > 0 else float("nan")


def _slope(pred, true) -> float:
    t = true - true.mean()
    den = (t * t).sum()
    return float((t * (pred - pred.mean())).sum() / den) if den > 0 else float("nan")


def score_pair(pred: np.ndarray, true: np.ndarray, top: np.ndarray) -> dict:
    """Pearson r, R², slope of ``pred`` on ``true`` on all genes and on ``top``; Jaccard of top sets."""
    k = len(top)
    pred_top = np.argsort(-np.abs(pred))[:k]
    return {"pearson_all": _pearson(pred, true), "pearson_top": _pearson(pred[top], true[top]),
            "r2_all": _r2(pred, true), "r2_top": _r2(pred[top], true[top]),
            "jaccard_top": len(set(pred_top) & set(top)) / len(set(pred_top) | set(top)),
            "slope_top": _slope(pred[top], true[top])}


def score_ates(predictions: dict, data, perturbations, *, split: str = "test", n_splits: int = 20,
               top_k: int = 20, additive: bool = True, seed: int = 0) -> pd.DataFrame:
    """Per-condition scores of each predictor, averaged over control splits.

    Parameters
    ----------
    predictions
        Predictor name → ATE table (conditions × genes), e.g. from
        :func:`inference.effects.model_ate`. Predictions are fixed; only the
        truth's control half varies between splits.
    perturbations
        Conditions to score (their clean cells in ``split`` are the truth).
    additive
        Add the additive baseline for combinations, built from the singles'
        clean cells outside ``split`` and the *other* control half.

    Returns
    -------
    pandas.DataFrame
        Long table: ``predictor``, ``perturbation``, :data:`SCORE_COLUMNS`,
        ``n_cells`` (truth cells); predictor ``ceiling`` is the truth's
        Spearman-Brown corrected split-half reliability (r columns only).
    """
    rng = np.random.default_rng(seed)
    control = clean_cells(data, data.control_label)
    if len(control) < 4:
        raise ValueError(f"{len(control)} clean control cells: too few to score against")
    x_control = perturbseq_normalise(data.counts[control])
    rows = []
    cache = {}

    def single_mean(t):
        if t not in cache:
            idx = clean_cells(data, t, exclude_split=split)
            cache[t] = _mean_expression(data, idx) if len(idx) else None
        return cache[t]

    for p in perturbations:
        idx = clean_cells(data, p, split=split)
        if len(idx) < 2:
            continue
        x_p = perturbseq_normalise(data.counts[idx])
        full_truth = x_p.mean(0) - x_control.mean(0)
        top = np.argsort(-np.abs(full_truth))[:top_k]
        targets = targets_of(p, data.control_label, data.separator)
        singles = [single_mean(t) for t in targets] if additive and len(targets) > 1 else None
        if singles is not None and any(s is None for s in singles):
            singles = None
        acc: dict = {}
        for _ in range(n_splits):
            perm = rng.permutation(len(control))
            c1, c2 = perm[: len(perm) // 2], perm[len(perm) // 2:]
            truth = x_p.mean(0) - x_control[c1].mean(0)
            for name, table in predictions.items():
                if p in table.index:
                    acc.setdefault(name, []).append(score_pair(table.loc[p].to_numpy(), truth, top))
            if singles is not None:
                base = sum(singles) - len(singles) * x_control[c2].mean(0)
                acc.setdefault("additive", []).append(score_pair(base, truth, top))
            h = rng.permutation(len(idx))
            h1, h2 = h[: len(h) // 2], h[len(h) // 2:]
            t1 = x_p[h1].mean(0) - x_control[c1].mean(0)
            t2 = x_p[h2].mean(0) - x_control[c2].mean(0)
            acc.setdefault("ceiling", []).append(
                {"pearson_all": _spearman_brown(_pearson(t1, t2)),
                 "pearson_top": _spearman_brown(_pearson(t1[top], t2[top]))})
        for name, scores in acc.items():
            mean = pd.DataFrame(scores).mean().to_dict()
            rows.append({"predictor": name, "perturbation": p, **mean, "n_cells": len(idx)})
    return pd.DataFrame(rows, columns=["predictor", "perturbation", *SCORE_COLUMNS, "n_cells"])


def _spearman_brown(r: float) -> float:
    return 2 * r / (1 + r) if np.isfinite(r) and r > -1 else float("nan")


def summarise_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Mean score of each predictor over conditions (predictors × score columns)."""
    return table.groupby("predictor", sort=False)[SCORE_COLUMNS].mean()


def interactions(predictions: dict, data, combinations, split: str = "test") -> pd.DataFrame:
    """How far each combination is from the sum of its singles, in the data and per predictor.

    Data: ``mean(AB) − mean(A) − mean(B) + control`` on clean cells (AB from
    ``split``, singles from the other splits). Predictor: ``ATE(AB) − ATE(A) −
    ATE(B)`` from its own table (it must hold the singles). Columns:
    ``perturbation``, ``data_norm`` (L2 over genes), ``<name>_norm`` and
    ``<name>_r`` (Pearson r with the data's interaction).
    """
    control = _mean_expression(data, clean_cells(data, data.control_label))
    rows = []
    for p in combinations:
        targets = targets_of(p, data.control_label, data.separator)
        idx = clean_cells(data, p, split=split)
        singles = [clean_cells(data, t, exclude_split=split) for t in targets]
        if len(idx) < 2 or any(len(s) == 0 for s in singles):
            continue
        observed = (_mean_expression(data, idx) - control
                    - sum(_mean_expression(data, s) - control for s in singles))
        row = {"perturbation": p, "data_norm": float(np.linalg.norm(observed))}
        for name, table in predictions.items():
            if p in table.index and all(t in table.index for t in targets):
                pred = table.loc[p].to_numpy() - sum(table.loc[t].to_numpy() for t in targets)
                row[f"{name}_norm"] = float(np.linalg.norm(pred))
                row[f"{name}_r"] = _pearson(pred, observed)
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["SCORE_COLUMNS", "clean_cells", "held_out_conditions", "interactions", "score_ates",
           "score_pair", "summarise_scores"]
