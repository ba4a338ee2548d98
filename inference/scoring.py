"""Scoring predicted ATEs against the data, as a sceptical reviewer would.

Three rules (DESIGN.md, evaluation vocabulary), :func:`score_ates`:

- **Clean truth.** The observed ATE of a condition uses its clean cells of the
  scored split minus clean control cells: artifact cells are not the effect of
  a perturbation.
- **Equal terms.** The truth is built only from cells no predictor trained on:
  the held-out condition cells minus the *held-out* control cells (the split
  holds out a share of the controls, :func:`cradle_pyro.splits.make_split`).
  Every predictor, the baselines of :mod:`cradle_pyro.inference.baselines`
  included, is built from the other cells only, so none shares noise with the
  truth and all face the same truth.
- **A ceiling beside every score.** The truth's split-half reliability: the
  condition's held-out cells and the held-out control cells are both halved,
  the two half-truths correlated, and the correlation Spearman-Brown corrected
  (``2r / (1 + r)``) to the full number of cells. A perfect predictor's
  expected r is about its square root.

Top-k genes are fixed per condition from the full truth, once, and used by
every predictor and by the ceiling.

The scorer of earlier releases, which drew the truth's control cells from all
control cells (most of them training cells) and kept only the additive
baseline off them, remains as :func:`score_ates_shared_controls`, for
conditions scored in-sample.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> data = PerturbationData.from_anndata(simulate_screen(600, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> combos = [c for c in held_out_conditions(data) if "+" in c]
>>> table = score_ates({}, data, combos, n_splits=5)
>>> sorted(table["predictor"].unique())
['additive', 'ceiling', 'linear', 'mean', 'no_change']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cradle_pyro.errors import CradleInputError
from cradle_pyro.splits import targets_of

from .effects import clean_mask, perturbseq_normalise

SCORE_COLUMNS = ["pearson_all", "pearson_top", "r2_all", "r2_top", "jaccard_top", "slope_top"]


def held_out_conditions(data, split: str = "test") -> list:
    """Conditions with cells in ``split`` (control excluded)."""
    conds = np.asarray(data.conditions)
    return [c for c in data.condition_names
            if c != data.control_label and ((data.split == split) & (conds == c)).any()]


def single_conditions(data) -> list:
    """Conditions of one perturbation each (control and combinations excluded)."""
    return [c for c in data.condition_names if c != data.control_label and data.separator not in c]


def clean_cells(data, condition, split=None, exclude_split=None) -> np.ndarray:
    """Indices of clean cells of ``condition`` (optionally in / not in a split)."""
    keep = (np.asarray(data.conditions) == condition) & clean_mask(data)
    if split is not None:
        keep &= data.split == split
    if exclude_split is not None:
        keep &= data.split != exclude_split
    return np.flatnonzero(keep)


def observed_cell_counts(data, perturbations, split=None) -> dict:
    """Per condition, ``(clean cells of it, clean control cells)``: the cells an observed ATE
    averages (:func:`~cradle_pyro.inference.effects.data_ate` with ``clean_only=True``; the
    condition's cells from ``split``, the control's from all splits), the sizes a predictive
    interval (``posterior_ate(kind="observed")``) needs. Conditions without such cells are
    refused by name."""
    n_control = len(clean_cells(data, data.control_label))
    counts = {p: (len(clean_cells(data, p, split=split)), n_control) for p in perturbations}
    unmeasured = [p for p, (n, _) in counts.items() if n == 0]
    if unmeasured:
        raise CradleInputError(f"{unmeasured[0]!r} has no clean cells in the screen to size an "
                               "observed ATE by; give the numbers of cells yourself "
                               "(--observed-cells N,M)")
    return counts


def _condition_truth(data, p, split, x_control, top_k):
    """A condition's clean ``split`` cells (indices, normalised), its truth against the mean of
    ``x_control`` and its top-``top_k`` genes; ``None`` with fewer than two cells."""
    idx = clean_cells(data, p, split=split)
    if len(idx) < 2:
        return None
    x_p = perturbseq_normalise(data.counts[idx])
    truth = x_p.mean(0) - x_control.mean(0)
    return idx, x_p, truth, np.argsort(-np.abs(truth))[:top_k]


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
    # a constant prediction (no_change) ranks no gene above another
    jaccard = (len(set(pred_top) & set(top)) / len(set(pred_top) | set(top))
               if np.ptp(pred) > 0 else float("nan"))
    return {"pearson_all": _pearson(pred, true), "pearson_top": _pearson(pred[top], true[top]),
            "r2_all": _r2(pred, true), "r2_top": _r2(pred[top], true[top]),
            "jaccard_top": jaccard,
            "slope_top": _slope(pred[top], true[top])}


def score_ates(predictions: dict, data, perturbations, *, split: str = "test", n_splits: int = 20,
               top_k: int = 20, baselines=None, seed: int = 0) -> pd.DataFrame:
    """Per-condition scores of each predictor and of the baselines, on equal terms.

    The truth of a condition is ``mean(its clean cells in split) − mean(the clean
    control cells in split)``: no cell of it trained any predictor. The
    baselines (:mod:`cradle_pyro.inference.baselines`) are built from the clean
    cells outside ``split`` only, as the models are. The ``ceiling`` is the
    truth's split-half reliability from the same held-out cells.

    Parameters
    ----------
    predictions
        Predictor name → ATE table (conditions × genes), e.g. from
        :func:`cradle_pyro.inference.effects.model_ate`.
    perturbations
        Conditions to score (their clean cells in ``split`` are the truth).
    baselines
        Which baselines to add (``None``, the default: all of
        :data:`~cradle_pyro.inference.baselines.BASELINES`); ``()`` for none.
    n_splits
        Halvings the ceiling is averaged over.

    Returns
    -------
    pandas.DataFrame
        Long table: ``predictor``, ``perturbation``, :data:`SCORE_COLUMNS`,
        ``n_cells`` (truth cells) and ``n_control`` (the truth's control
        cells); predictor ``ceiling`` has the r columns only.
    """
    from .baselines import BASELINES, baseline_ates   # baselines build on clean_cells, defined here

    baselines = BASELINES if baselines is None else tuple(baselines)

    rng = np.random.default_rng(seed)
    control = clean_cells(data, data.control_label, split=split)
    if len(control) < 4:
        raise CradleInputError(
            f"{len(control)} clean control cells in split {split!r}: a truth on equal terms "
            "needs held-out control cells; split with heldout_control_fraction=0.5 "
            "(PerturbationData.from_anndata) or put control cells in 'test' in your split "
            "column (score_ates_shared_controls scores against all control cells instead)")
    clash = sorted(set(predictions) & {*baselines, "ceiling"})
    if clash:
        raise CradleInputError(f"predictor name(s) {clash} are taken by the baselines; rename them")
    predictors = {**predictions, **(baseline_ates(data, perturbations, split=split, kinds=baselines)
                                    if baselines else {})}
    x_control = perturbseq_normalise(data.counts[control])
    rows = []
    for p in perturbations:
        found = _condition_truth(data, p, split, x_control, top_k)
        if found is None:
            continue
        idx, x_p, truth, top = found
        for name, table in predictors.items():
            if p in table.index:
                rows.append({"predictor": name, "perturbation": p, "n_cells": len(idx),
                             **score_pair(table.loc[p].to_numpy(), truth, top)})
        rows.append({"predictor": "ceiling", "perturbation": p, "n_cells": len(idx),
                     **split_half_ceiling(x_p, x_control, top, n_splits, rng)})
    table = pd.DataFrame(rows, columns=["predictor", "perturbation", *SCORE_COLUMNS, "n_cells"])
    table["n_control"] = len(control)
    return table


def split_half_ceiling(x_p, x_control, top, n_splits, rng) -> dict:
    """The truth's reliability: both cell sets halved, the half-truths correlated, the mean r
    over ``n_splits`` halvings Spearman-Brown corrected to the full number of cells."""
    r_all, r_top = [], []
    for _ in range(n_splits):
        h, c = rng.permutation(len(x_p)), rng.permutation(len(x_control))
        h1, h2, c1, c2 = h[: len(h) // 2], h[len(h) // 2:], c[: len(c) // 2], c[len(c) // 2:]
        t1 = x_p[h1].mean(0) - x_control[c1].mean(0)
        t2 = x_p[h2].mean(0) - x_control[c2].mean(0)
        r_all.append(_spearman_brown(_pearson(t1, t2)))
        r_top.append(_spearman_brown(_pearson(t1[top], t2[top])))
    return {"pearson_all": float(np.mean(r_all)), "pearson_top": float(np.mean(r_top))}


def score_ates_shared_controls(predictions: dict, data, perturbations, *, split: str | None = "test",
                               n_splits: int = 20, top_k: int = 20, additive: bool = True,
                               seed: int = 0) -> pd.DataFrame:
    """The scorer of releases before 0.5: the truth's control cells are halves of *all* clean
    control cells, most of which a model trained on; only the additive baseline is kept off them.

    Use it where no control cell is held out (conditions scored in-sample, ``split=None``);
    to compare predictors on held-out conditions use :func:`score_ates`, which gives every
    predictor the same footing. Scores are averaged over control splits.

    Parameters
    ----------
    predictions
        Predictor name → ATE table (conditions × genes), e.g. from
        :func:`cradle_pyro.inference.effects.model_ate`. Predictions are fixed; only the
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
        found = _condition_truth(data, p, split, x_control, top_k)
        if found is None:
            continue
        idx, x_p, _, top = found   # top genes from the full truth (all clean control cells)
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


def effect_slope(predictions: dict, data, perturbations, *, split: str | None = None,
                 n_splits: int = 20, top_k: int = 20, seed: int = 0) -> pd.DataFrame:
    """Slope of predicted on *true* ATE over each condition's top genes, free of the two biases
    of a slope on the observed ATE.

    A slope of predictions on observed ATEs is attenuated by the observed ATE's
    noise (regression dilution) and, when the top genes are chosen by the same
    observed ATE, by the winner's curse: a perfect predictor scores below 1.
    Here each of ``n_splits`` random splits divides a condition's clean cells
    into halves A and B, and the clean control cells into three parts:

    - the top ``top_k`` genes are chosen by ``|ATE_A|`` (half A, control part
      1), so the selection is independent of B's noise;
    - B is halved again into B1, B2 (control parts 2 and 3): ``cov(ATE_B1,
      ATE_B2)`` over the chosen genes estimates the variance of the true
      effect there, free of noise;
    - ``cov(pred, ATE_B)`` estimates the covariance of the prediction with the
      true effect.

    Pooled over conditions and splits, ``Σ cov(pred, ATE_B) / Σ cov(ATE_B1,
    ATE_B2)`` is the slope on the true effect (1: no shrinkage; a perfect
    predictor scores 1 up to noise). Conditions with no effect add nothing to
    either sum instead of a noisy ratio. Its own noise is large where effects
    are weak: the true ATE scored 0.95, 1.33 and 1.05 on three simulated
    screens of Norman-like strength (12 singles, 100 cells each), where the
    slope on the observed ATE gave it 0.49–0.50. For conditions the model was
    trained on, half B's noise is in the training data too, so an overfitting
    model scores above 1.

    Returns
    -------
    pandas.DataFrame
        Index: predictors; columns ``slope`` (pooled), ``signal_variance``
        (the pooled denominator per condition and split) and ``n_conditions``.
    """
    rng = np.random.default_rng(seed)
    x_control = perturbseq_normalise(data.counts[clean_cells(data, data.control_label)])
    if len(x_control) < 6:
        raise ValueError(f"{len(x_control)} clean control cells: too few to split in three")
    num = {name: 0.0 for name in predictions}
    den, used = 0.0, 0
    for p in perturbations:
        idx = clean_cells(data, p, split=split)
        if len(idx) < 4 or not any(p in t.index for t in predictions.values()):
            continue
        used += 1
        x_p = perturbseq_normalise(data.counts[idx])
        preds = {n: t.loc[p].to_numpy() for n, t in predictions.items() if p in t.index}
        for _ in range(n_splits):
            h, c = rng.permutation(len(idx)), np.array_split(rng.permutation(len(x_control)), 3)
            a, b = h[: len(h) // 2], h[len(h) // 2:]
            b1, b2 = b[: len(b) // 2], b[len(b) // 2:]
            top = np.argsort(-np.abs(x_p[a].mean(0) - x_control[c[0]].mean(0)))[:top_k]
            t1 = (x_p[b1].mean(0) - x_control[c[1]].mean(0))[top]
            t2 = (x_p[b2].mean(0) - x_control[c[2]].mean(0))[top]
            tb = (t1 + t2) / 2
            den += float(((t1 - t1.mean()) * (t2 - t2.mean())).sum())
            for name, pred in preds.items():
                q = pred[top]
                num[name] += float(((q - q.mean()) * (tb - tb.mean())).sum())
    scale = max(used * n_splits, 1)
    return pd.DataFrame({"slope": {n: v / den if den > 0 else float("nan") for n, v in num.items()},
                         "signal_variance": {n: den / scale for n in num},
                         "n_conditions": {n: used for n in num}})


def interactions(predictions: dict, data, combinations, split: str = "test") -> pd.DataFrame:
    """How far each combination is from the sum of its singles, in the data and per predictor.

    Data: ``(mean(AB) − control) − Σ (mean(A) − control')`` on clean cells: AB
    and ``control`` from ``split``, the singles and ``control'`` from the other
    splits (all control cells for both where none is held out). Predictor:
    ``ATE(AB) − ATE(A) − ATE(B)`` from its own table (it must hold the
    singles). Columns: ``perturbation``, ``data_norm`` (L2 over genes),
    ``<name>_norm`` and ``<name>_r`` (Pearson r with the data's interaction).
    """
    held = clean_cells(data, data.control_label, split=split)
    if len(held) < 2:
        held = clean_cells(data, data.control_label)
    control = _mean_expression(data, held)
    control_train = _mean_expression(data, clean_cells(data, data.control_label,
                                                        exclude_split=split))
    rows = []
    for p in combinations:
        targets = targets_of(p, data.control_label, data.separator)
        idx = clean_cells(data, p, split=split)
        singles = [clean_cells(data, t, exclude_split=split) for t in targets]
        if len(idx) < 2 or any(len(s) == 0 for s in singles):
            continue
        observed = (_mean_expression(data, idx) - control
                    - sum(_mean_expression(data, s) - control_train for s in singles))
        row = {"perturbation": p, "data_norm": float(np.linalg.norm(observed))}
        for name, table in predictions.items():
            if p in table.index and all(t in table.index for t in targets):
                pred = table.loc[p].to_numpy() - sum(table.loc[t].to_numpy() for t in targets)
                row[f"{name}_norm"] = float(np.linalg.norm(pred))
                row[f"{name}_r"] = _pearson(pred, observed)
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["SCORE_COLUMNS", "clean_cells", "effect_slope", "held_out_conditions", "interactions",
           "observed_cell_counts",
           "score_ates", "score_ates_shared_controls", "split_half_ceiling",
           "score_pair", "summarise_scores"]
