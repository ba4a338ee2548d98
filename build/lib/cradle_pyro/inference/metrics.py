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

from .seeding import keeps_global_rng


def ate_metrics(predicted: pd.DataFrame, observed: pd.DataFrame, top_k: int = 20) -> pd.DataFrame:
    """Per perturbation: Pearson r, R² and slope over all genes and over the top-k DE genes
    (largest absolute observed ATE), and the Jaccard overlap of the top-k gene sets.

    One observed table, no noise ceiling: for scores against data use
    :func:`cradle_pyro.inference.scoring.score_ates`, which also keeps the additive
    baseline from sharing control cells with the truth.
    """
    from .scoring import score_pair

    rows = []
    for p in observed.index:
        o = observed.loc[p].to_numpy(dtype=float)
        top = np.argsort(-np.abs(o))[:top_k]
        rows.append(dict(perturbation=p, **score_pair(predicted.loc[p].to_numpy(dtype=float), o, top)))
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


def mean_and_noise_of_mean(total, squares, n):
    """A group's mean vector and the variance of that mean summed over dimensions (tr Cov / n),
    from the sum and the sum of squares of its n vectors.

    >>> import numpy as np
    >>> x = np.array([[0.0, 1.0], [2.0, 3.0]])
    >>> mean, noise = mean_and_noise_of_mean(x.sum(0), (x ** 2).sum(0), 2)
    >>> mean.tolist(), float(noise)  # variance 2 per dimension, over n = 2: 1 + 1
    ([1.0, 2.0], 2.0)
    """
    mean = total / n
    spread = (squares - n * mean ** 2).sum() / max(n - 1, 1)
    return mean, spread / n


@keeps_global_rng
def basal_leakage(model, guide, data, split=None, batch_size: int = 512, seed: int = 0) -> pd.DataFrame:
    """How much of each condition sits in the basal state, per condition.

    Encodes the cells (one posterior draw of the globals, the guide's
    q(basal | x) locations) and compares, per condition, the norm of the mean
    basal location *minus the control cells' mean basal location* with the
    norm of the condition's perturbation offset ``dosage @ (effect * mask)``.
    The basal state is exogenous, so its mean should not depend on the
    condition: the ratio should be near 0 (up to the noise of a mean over the
    condition's cells); a large ratio means part of the perturbation sits in
    the basal state, where generation from the prior drops it.

    The mean of a condition's cells is noisy even without leakage:
    ``noise_norm`` is the norm that noise alone gives (the root of
    tr Cov_c / n_c + tr Cov_control / n_control, from the cells' spread), and
    ``leakage_beyond_noise`` is √max(basal_mean_norm² − noise_norm², 0) over
    the offset norm: the leakage with the noise of the means removed (the
    squared shift is unbiased).

    Returns a table: ``condition``, ``n_cells``, ``basal_mean_norm`` (of the
    difference to control), ``offset_norm``, ``leakage`` (their ratio),
    ``noise_norm``, ``leakage_beyond_noise``.
    """
    import pyro
    import torch
    from pyro import poutine

    from .objective import _location

    pyro.set_rng_seed(seed)
    sums, squares, counts, offsets = {}, {}, {}, {}
    conds = np.asarray(data.conditions)
    with torch.no_grad():
        gtr = None
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=model.device):
            kw = dict(batch.model_kwargs(), reference=None)
            if gtr is None:  # one draw of the globals for all batches
                gtr = poutine.trace(guide).get_trace(**kw)
                globals_ = {k: gtr.nodes[k]["value"] if k in gtr.nodes else None
                            for k in ("effect", "mask")}
            tr = poutine.trace(poutine.condition(guide, data={k: v for k, v in globals_.items()
                                                              if v is not None})).get_trace(**kw)
            loc = _location(tr.nodes["basal"]["fn"]).reshape(batch.size, -1).cpu().numpy()
            off = model.perturbation_offset(batch.dosage, globals_["effect"], globals_["mask"])
            off = off.reshape(batch.size, -1).cpu().numpy()
            for i, c in zip(range(batch.size), conds[batch.cell_index.cpu().numpy()]):
                sums[c] = sums.get(c, 0.0) + loc[i]
                squares[c] = squares.get(c, 0.0) + loc[i] ** 2
                counts[c] = counts.get(c, 0) + 1
                offsets[c] = off[i]

    def mean_and_variance(c):
        return mean_and_noise_of_mean(sums[c], squares[c], counts[c])

    rows = []
    control, control_variance = mean_and_variance(data.control_label)
    for c in sums:
        if c == data.control_label:
            continue
        mean, variance = mean_and_variance(c)
        m = np.linalg.norm(mean - control)
        noise = float(np.sqrt(variance + control_variance))
        o = np.linalg.norm(offsets[c])
        beyond = np.sqrt(max(m ** 2 - noise ** 2, 0.0))
        rows.append({"condition": c, "n_cells": counts[c], "basal_mean_norm": float(m),
                     "offset_norm": float(o), "leakage": float(m / o) if o > 0 else float("nan"),
                     "noise_norm": noise,
                     "leakage_beyond_noise": float(beyond / o) if o > 0 else float("nan")})
    return pd.DataFrame(rows)
