"""Evaluation metrics: ATE agreement, top-k DE overlap, energy distance, QC pass rate.

Example
-------
>>> import numpy as np, pandas as pd
>>> truth = pd.DataFrame([[1.0, 0.0, -1.0, 0.5]], index=["A"])
>>> ate_metrics(truth * 2, truth, top_k=2)["pearson_all"].item()
1.0
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist


def _pearson(a, b):
    if np.std(a) == 0 or np.std(b) == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def _r2(pred, true):
    ss = np.sum((true - true.mean()) ** 2)
    return float(1 - np.sum((true - pred) ** 2) / ss) if ss > 0 else np.nan


def ate_metrics(predicted: pd.DataFrame, observed: pd.DataFrame, top_k: int = 20) -> pd.DataFrame:
    """Per perturbation: Pearson r and R² over all genes and over the top-k DE genes
    (largest |observed ATE|), and the Jaccard overlap of the top-k gene sets."""
    rows = []
    for p in observed.index:
        o = observed.loc[p].to_numpy(dtype=float)
        q = predicted.loc[p].to_numpy(dtype=float)
        top = np.argsort(-np.abs(o))[:top_k]
        top_pred = np.argsort(-np.abs(q))[:top_k]
        rows.append(dict(
            perturbation=p,
            pearson_all=_pearson(q, o), r2_all=_r2(q, o),
            pearson_top=_pearson(q[top], o[top]), r2_top=_r2(q[top], o[top]),
            jaccard_top=len(set(top) & set(top_pred)) / len(set(top) | set(top_pred)),
        ))
    return pd.DataFrame(rows).set_index("perturbation")


def energy_distance(x: np.ndarray, y: np.ndarray, max_cells: int = 2000, seed: int = 0) -> float:
    """Energy distance between two samples (rows), subsampled to ``max_cells`` each."""
    rng = np.random.default_rng(seed)
    if len(x) > max_cells:
        x = x[rng.choice(len(x), max_cells, replace=False)]
    if len(y) > max_cells:
        y = y[rng.choice(len(y), max_cells, replace=False)]
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def pca_energy_distance(generated: np.ndarray, real: np.ndarray, n_components: int = 20,
                        seed: int = 0) -> float:
    """Energy distance in the PCA space of the real cells (perturbseq-normalised input)."""
    from sklearn.decomposition import PCA

    from .effects import perturbseq_normalise

    real_n, gen_n = perturbseq_normalise(real), perturbseq_normalise(generated)
    k = int(min(n_components, real_n.shape[1], real_n.shape[0] - 1))
    pca = PCA(n_components=k, random_state=seed).fit(real_n)
    return energy_distance(pca.transform(gen_n), pca.transform(real_n), seed=seed)


def qc_pass_rate(thresholds, adata) -> float:
    """Share of cells that pass every QC rule learnt on the training data."""
    return float(1 - thresholds.judge(adata)["artifact"].mean())
