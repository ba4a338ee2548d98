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
>>> from inference import TrainConfig, fit
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


__all__ = ["add_latents", "latent_representation"]
