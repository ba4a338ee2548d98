"""Latent representations for scanpy: the basal state and the full latent, per cell.

:func:`latent_representation` encodes cells with the guide (posterior mean of
q(basal | x, offsets), averaged over ``num_samples`` draws of the globals) and
returns

- ``basal``: the cell before anything happened (perturbation and artifact
  removed): cells of different conditions should mix here;
- ``latent``: the decoder input ``z`` (basal combined with the perturbation and
  artifact offsets): conditions separate here.

:func:`add_latents` writes them to ``adata.obsm["X_cradle_basal"]`` and
``adata.obsm["X_cradle_latent"]``, ready for ``sc.pp.neighbors(adata,
use_rep="X_cradle_basal")`` and ``sc.tl.umap``.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(300, 40, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> rep = latent_representation(run.model, run.guide, data)
>>> rep["basal"].shape == (data.n_cells, run.model.latent_dim)
True
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from .outputs import save_figure
from .objective import _location
from .seeding import keeps_global_rng


@keeps_global_rng
def latent_representation(model, guide, data, *, num_samples: int = 4, batch_size: int = 512,
                          seed: int = 0) -> dict:
    """Per cell (in ``data`` order): ``basal`` (n × d) and ``latent`` (n × decoder input)."""
    pyro.set_rng_seed(seed)
    n = data.n_cells
    basal = np.zeros((n, model.latent_dim), dtype=np.float32)
    latent = np.zeros((n, model.decoder_input_dim), dtype=np.float32)
    with torch.no_grad():
        for batch in data.batches(None, batch_size=batch_size, shuffle=False, device=model.device):
            kw = dict(batch.model_kwargs(), num_cells=None, cell_index=None, reference=None)
            idx = batch.cell_index.cpu().numpy()
            for _ in range(num_samples):
                gtr = poutine.trace(guide).get_trace(**kw)
                loc = _location(gtr.nodes["basal"]["fn"])
                conditioned = poutine.condition(poutine.replay(model, trace=gtr),
                                                data={"basal": loc})
                z = poutine.trace(conditioned).get_trace(**kw).nodes["_RETURN"]["value"]
                basal[idx] += loc.reshape(batch.size, -1).cpu().numpy() / num_samples
                latent[idx] += z.reshape(batch.size, -1).cpu().numpy() / num_samples
    return {"basal": basal, "latent": latent}


def add_latents(adata, model, guide, data, **kwargs):
    """Write ``X_cradle_basal`` and ``X_cradle_latent`` into ``adata.obsm`` (cells matched by name)."""
    rep = latent_representation(model, guide, data, **kwargs)
    order = pd.Index(data.obs_names).get_indexer(adata.obs_names.astype(str))
    if (order < 0).any():
        missing = list(adata.obs_names[order < 0][:3])
        raise ValueError(f"{int((order < 0).sum())} cells of adata (e.g. {missing}) are not in data")
    adata.obsm["X_cradle_basal"] = rep["basal"][order]
    adata.obsm["X_cradle_latent"] = rep["latent"][order]
    return adata


def umap_figure(cells, path):
    """UMAPs of the basal state and the full latent, coloured by perturbation and artifact."""
    import scanpy as sc
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 8))
    axes = fig.subplots(2, 2)
    for row, rep in enumerate(("X_cradle_basal", "X_cradle_latent")):
        view = cells.copy()
        sc.pp.neighbors(view, use_rep=rep, random_state=0)
        sc.tl.umap(view, random_state=0)
        xy = view.obsm["X_umap"]
        for col, key in enumerate(("perturbation", "artifact")):
            ax = axes[row, col]
            for value in view.obs[key].astype(str).unique():
                sel = (view.obs[key].astype(str) == value).to_numpy()
                ax.scatter(xy[sel, 0], xy[sel, 1], s=2, alpha=0.5, label=value)
            ax.set_title(f"{rep[2:]}: {key}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if view.obs[key].nunique() <= 12:
                ax.legend(fontsize=6, markerscale=3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def cells_with_latents(model, guide, data, max_cells: int | None = 3000, seed: int = 0,
                       with_counts: bool = False):
    """AnnData of (at most ``max_cells``; ``None``: all) cells of ``data`` with their
    latents in obsm; obs ``perturbation``, ``artifact``, ``split``; counts in X
    with ``with_counts``."""
    import anndata as ad

    n = data.n_cells if max_cells is None else min(max_cells, data.n_cells)
    keep = np.sort(np.random.default_rng(seed).choice(data.n_cells, n, replace=False))
    rep = latent_representation(model, guide, data, seed=seed)
    artifact = data.artifact.max(1) if data.n_artifacts else np.zeros(data.n_cells)
    obs = pd.DataFrame({"perturbation": pd.Categorical(np.asarray(data.conditions)[keep]),
                        "artifact": artifact[keep].astype(str), "split": data.split[keep]},
                       index=[data.obs_names[i] for i in keep])
    cells = (ad.AnnData(X=data.counts[keep], obs=obs, var=pd.DataFrame(index=data.gene_names))
             if with_counts else ad.AnnData(obs=obs))
    cells.obsm["X_cradle_basal"] = rep["basal"][keep]
    cells.obsm["X_cradle_latent"] = rep["latent"][keep]
    return cells


__all__ = ["add_latents", "cells_with_latents", "latent_representation", "umap_figure"]
