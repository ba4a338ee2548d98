"""Abduction of the artifact state: each cell's posterior probability of each artifact kind.

For a model whose artifact state is latent (``ModelConfig(artifact_state="latent")``,
:mod:`cradle_pyro.artifact_state`), q(artifact | counts, QC flags, QC
covariates) is the guide's amortised posterior. :func:`artifact_posterior`
returns it beside the k·MAD flags, and :func:`add_artifact_posterior` writes
both to an AnnData's ``obs``. Counterfactual cleaning
(:func:`cradle_pyro.inference.counterfactuals.counterfactual` with ``artifact="clean"``)
then draws each cell's artifact state from this posterior during abduction:
a clean cell a threshold flagged is abducted as clean and left nearly as it
is; a damaged cell the threshold missed is abducted as damaged and cleaned.

Example
-------
>>> from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(300, 60, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=1, progress=False), ModelConfig(artifact_state="latent"))
>>> post = artifact_posterior(run.model, run.guide, data)
>>> list(post.columns)[:4]
['p_damaged', 'p_low_complexity', 'p_doublet', 'p_any']
>>> bool(post["p_any"].between(0, 1).all())
True
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cradle_pyro.errors import CradleInputError
from cradle_pyro.guides import ArtifactGuide, guide_part

from .outputs import save_figure


def artifact_posterior(model, guide, data, split: str | None = None,
                       batch_size: int = 1024) -> pd.DataFrame:
    """q(artifact_a = 1 | cell) per cell and kind, beside the QC flags.

    Parameters
    ----------
    model, guide
        A trained model with ``artifact_state="latent"`` and its guide.
    data
        :class:`~cradle_pyro.data.PerturbationData`; ``split`` picks cells
        (all by default).

    Returns
    -------
    DataFrame
        Indexed by cell: ``p_<cause>`` (posterior probability of each latent
        cause, at the posterior mean of the flags' sensitivity and
        specificity), ``p_any`` (of at least one) and ``flag_<criterion>``
        (each QC flag, 0/1).
    """
    if not model.config.latent_artifacts:
        raise CradleInputError(
            "this model observes the artifact state (its QC flags are the state): there is no "
            "posterior to report; train with artifact_state='latent' (--artifact-state latent)")
    part = guide_part(guide, lambda g: isinstance(g, ArtifactGuide))
    if part is None:
        raise CradleInputError("the guide has no ArtifactGuide part: add one to it "
                               "(cradle_pyro.guides.ArtifactGuide)")
    probs, p_any, index = [], [], []
    with torch.no_grad():
        rates = part.mean_rates() if part.n_flags else (None, None)
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=model.device):
            q = part.posterior(batch.flags, batch.qc, *rates)
            probs.append(q.marginals().cpu().numpy())
            p_any.append(1 - q.logits[..., 0].exp().cpu().numpy())  # state 0: no cause
            index.append(batch.cell_index.cpu().numpy())
    idx = np.concatenate(index)
    p = np.concatenate(probs)
    out = {f"p_{cause}": p[:, k] for k, cause in enumerate(model.config.artifact_causes)}
    out["p_any"] = np.concatenate(p_any)
    flags = data.qc_flags if data.qc_flags is not None else data.artifact
    for a, name in enumerate(data.qc_flag_names or data.artifact_names):
        out[f"flag_{name}"] = flags[idx, a]
    return pd.DataFrame(out, index=[data.obs_names[i] for i in idx])


def add_artifact_posterior(adata, model, guide, data, prefix: str = "cradle_") -> None:
    """Write :func:`artifact_posterior` into ``adata.obs`` (``cradle_p_<kind>``, ``cradle_flag_<kind>``).

    Cells of ``adata`` the run did not see are left as NaN.
    """
    post = artifact_posterior(model, guide, data)
    for col in post.columns:
        adata.obs[prefix + col] = post[col].reindex(adata.obs_names.astype(str)).to_numpy()


def artifact_summary(post: pd.DataFrame) -> dict:
    """How the posterior and the QC flags disagree: cells flagged but abducted clean
    (P(any cause) < 0.5) and cells unflagged but abducted as artifacts."""
    flags = post.filter(like="flag_").max(1).to_numpy() > 0
    artifact = post["p_any"].to_numpy() >= 0.5
    out = {"n_cells": int(len(post)), "flagged": int(flags.sum()),
           "abducted_artifact": int(artifact.sum()),
           "flagged_but_clean": int((flags & ~artifact).sum()),
           "unflagged_but_artifact": int((~flags & artifact).sum())}
    for col in post.columns:
        if col.startswith("p_") and col != "p_any":
            out[f"mean_{col}"] = float(post[col].mean())
    return out


def artifact_figure(post: pd.DataFrame, data, path) -> None:
    """Posterior artifact probability against the QC covariates, flags marked.

    One panel per pair of (library size, detected genes, mitochondrial share,
    doublet score) that the data has, coloured by P(any cause); QC-flagged
    cells are ringed. A last panel: histograms of P(any cause) for flagged
    and unflagged cells.
    """
    from matplotlib.figure import Figure

    names = list(data.qc_covariate_names)
    qc = pd.DataFrame(data.qc_covariates, columns=names, index=data.obs_names).loc[post.index]
    pairs = [(a, b) for a, b in (("log_total_counts", "logit_pct_mt"),
                                 ("log_total_counts", "log_n_genes"),
                                 ("log_total_counts", "doublet_score")) if a in names and b in names]
    fig = Figure(figsize=(4.2 * (len(pairs) + 1), 3.8))
    axes = fig.subplots(1, len(pairs) + 1, squeeze=False)[0]
    flags = post.filter(like="flag_").max(1).to_numpy() > 0
    p = post["p_any"].to_numpy()
    for ax, (a, b) in zip(axes, pairs):
        sc = ax.scatter(qc[a], qc[b], c=p, s=4, cmap="viridis", vmin=0, vmax=1)
        ax.scatter(qc[a][flags], qc[b][flags], s=14, facecolors="none", edgecolors="red",
                   linewidths=0.5, label="QC flagged")
        ax.set_xlabel(f"{a} (robust z)")
        ax.set_ylabel(f"{b} (robust z)")
        ax.legend(loc="best", fontsize=7)
        fig.colorbar(sc, ax=ax, label="P(any artifact cause)")
    ax = axes[-1]
    bins = np.linspace(0, 1, 21)
    ax.hist(p[~flags], bins=bins, alpha=0.6, label=f"unflagged ({int((~flags).sum())})")
    ax.hist(p[flags], bins=bins, alpha=0.6, label=f"QC flagged ({int(flags.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel("P(any artifact cause)")
    ax.set_ylabel("cells")
    ax.legend(fontsize=7)
    fig.suptitle("Latent artifact state: posterior vs QC metrics and flags")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
