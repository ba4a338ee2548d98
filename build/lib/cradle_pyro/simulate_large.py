"""A large simulated screen, written to ``.h5ad`` chunk by chunk and never dense.

:func:`simulate_large_screen` draws the same generative story as
:func:`cradle_pyro.simulate.simulate_screen` (basal states in clusters,
sparse latent effects, combinations with interactions, negative-binomial
counts, injected damaged / doublet / low-complexity artifacts) for up to
millions of cells: cells are drawn in chunks, each chunk's counts go straight
to a CSR dataset on disk (``anndata.io.sparse_dataset(...).append``), and only
per-cell metadata lives in memory. Clean twins are kept for a random sample
of cells only (``uns["clean_twins"]``: their positions and clean counts).

Example
-------
>>> import tempfile, anndata as ad
>>> path = simulate_large_screen(tempfile.mkdtemp() + "/big.h5ad", n_cells=2000, n_genes=300,
...                              n_singles=20, chunk_size=700, seed=0)
>>> adata = ad.read_h5ad(path, backed="r")
>>> adata.shape, sorted(adata.uns["clean_twins"])
((2000, 300), ['cells', 'counts'])
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .simulate import ARTIFACT_KINDS, _nb, _screen_design


def simulate_large_screen(
    path,
    n_cells: int = 1_000_000,
    n_genes: int = 2000,
    n_singles: int = 200,
    n_combinations: int = 100,
    n_interacting: int = 20,
    latent_dim: int = 10,
    artifact_fraction: float = 0.08,
    control_fraction: float = 0.05,
    library_median: float = 2000.0,
    effect_scale: float = 1.5,
    n_states: int = 4,
    n_twins: int = 10_000,
    chunk_size: int = 20_000,
    seed: int = 0,
    progress: bool | None = None,
) -> Path:
    """Simulate a large screen and write it to ``path`` (``.h5ad``).

    Parameters
    ----------
    path
        Output file; overwritten.
    n_cells, n_genes, n_singles, n_combinations, n_interacting, latent_dim
        As in :func:`~cradle_pyro.simulate.simulate_screen`.
    library_median
        Median UMIs per cell over the panel; 2,000 over 2,000 genes gives about
        550 detected genes per cell, the sparsity of a Perturb-seq screen's
        variable genes.
    n_twins
        Cells (at random) whose clean twins are kept in ``uns["clean_twins"]``.
    chunk_size
        Cells drawn and written at a time; memory grows with it, not with ``n_cells``.
    progress
        Show a progress bar (default: on a terminal).

    Returns
    -------
    Path
        ``path``. obs: ``perturbation``, ``artifact_kind``, ``is_artifact``;
        uns: ``truth`` (latent effects, decoder, conditions), ``clean_twins``.
    """
    from anndata.io import sparse_dataset, write_elem
    from tqdm.auto import tqdm

    path = Path(path)
    rng = np.random.default_rng(seed)
    d = _screen_design(rng, n_genes, n_singles, n_combinations, n_interacting, latent_dim,
                       effect_scale, None)
    n_cond = len(d.conditions)
    n_control = int(round(control_fraction * n_cells))
    cond_idx = rng.permutation(np.concatenate([np.zeros(n_control, np.int32),
                                               rng.integers(1, n_cond, n_cells - n_control,
                                                            dtype=np.int32)]))
    centres = rng.normal(0.0, 1.5, (n_states, latent_dim))
    kind = np.zeros(n_cells, dtype=np.int8)  # 0 none, 1.. ARTIFACT_KINDS
    art_cells = rng.choice(n_cells, int(round(artifact_fraction * n_cells)), replace=False)
    kind[art_cells] = 1 + np.arange(len(art_cells)) % len(ARTIFACT_KINDS)
    twins = np.sort(rng.choice(n_cells, min(n_twins, n_cells), replace=False))
    # per-gene loadings in float32: a chunk's logits are chunk × genes, never n_cells × genes
    decoder = d.decoder.astype(np.float32)
    baseline, effect = d.baseline.astype(np.float32), d.latent_effect.astype(np.float32)

    obs = pd.DataFrame({
        "perturbation": pd.Categorical.from_codes(cond_idx, categories=d.conditions),
        "artifact_kind": pd.Categorical.from_codes(kind, categories=["none", *ARTIFACT_KINDS]),
        "is_artifact": kind > 0,
    }, index=[f"cell{i:07d}" for i in range(n_cells)])
    skeleton = ad.AnnData(obs=obs, var=pd.DataFrame(index=d.genes))
    skeleton.uns["truth"] = {"conditions": np.array(d.conditions), "latent_effect": d.latent_effect,
                             "decoder": d.decoder, "baseline": d.baseline,
                             "dispersion": d.dispersion, "seed": seed}
    skeleton.uns["control_label"] = "control"
    skeleton.uns["combination_separator"] = "+"
    skeleton.write_h5ad(path)

    twin_counts = []
    starts = range(0, n_cells, chunk_size)
    with h5py.File(path, "a") as f:
        for i, start in enumerate(tqdm(starts, desc="simulate", unit="chunk", disable=progress is False
                                       if progress is not None else None)):
            stop = min(start + chunk_size, n_cells)
            clean, observed = _chunk(rng, cond_idx[start:stop], kind[start:stop], centres, baseline,
                                     decoder, effect, d.dispersion, d.is_mt, library_median)
            mine = twins[(twins >= start) & (twins < stop)] - start
            if len(mine):
                twin_counts.append(sp.csr_matrix(clean[mine]))
            chunk = sp.csr_matrix(observed)
            if i == 0:
                write_elem(f, "X", chunk)
                X = sparse_dataset(f["X"])
            else:
                X.append(chunk)
        write_elem(f, "uns/clean_twins", {
            "cells": twins, "counts": sp.vstack(twin_counts).tocsr() if twin_counts
            else sp.csr_matrix((0, n_genes), dtype=np.float32)})
    return path


def _chunk(rng, cond, kind, centres, baseline, decoder, effect, dispersion, is_mt, library_median):
    """Clean and observed counts (float32, dense) of one chunk of cells."""
    n = len(cond)
    basal = centres[rng.integers(0, len(centres), n)] + rng.normal(0.0, 0.6, (n, centres.shape[1]))
    logits = baseline + (basal.astype(np.float32) + effect[cond]) @ decoder
    logits -= logits.max(1, keepdims=True)
    prop = np.exp(logits)
    prop /= prop.sum(1, keepdims=True)
    library = library_median * np.exp(rng.normal(0.0, 0.35, n))
    clean = _nb(rng, library[:, None] * prop, dispersion).astype(np.float32)
    observed = clean.copy()
    damaged = np.flatnonzero(kind == 1 + ARTIFACT_KINDS.index("damaged"))
    observed[np.ix_(damaged, ~is_mt)] = rng.binomial(clean[np.ix_(damaged, ~is_mt)].astype(np.int64), 0.25)
    observed[np.ix_(damaged, is_mt)] = clean[np.ix_(damaged, is_mt)] * 2
    doublets = np.flatnonzero(kind == 1 + ARTIFACT_KINDS.index("doublet"))
    observed[doublets] = clean[doublets] + clean[rng.integers(0, n, len(doublets))]
    low = np.flatnonzero(kind == 1 + ARTIFACT_KINDS.index("low_complexity"))
    observed[low] = rng.binomial(clean[low].astype(np.int64), 0.12)
    return clean, observed
