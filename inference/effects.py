"""Interventional sampling and average treatment effects.

- :func:`generate`: new cells under ``do(dosage=..., artifact=...)``, basal
  states from the prior, globals from the guide's posterior, library sizes
  given or resampled from the training cells.
- :func:`sample_cells`: the same, returned as AnnData.
- :func:`model_ate` / :func:`data_ate`: ATE tables (perturbations × genes) in
  perturbseq normalisation, ``mean log2(1e4·x/Σx + 1)`` under p minus under
  control. The model's ATE uses generated clean cells (``do(artifact=0)``) and
  common random numbers (the same basal states, libraries and posterior draws
  for every condition), in chunks so thousands of particles fit in memory.

Example
-------
>>> import numpy as np
>>> x = np.array([[10, 0], [0, 10]])
>>> perturbseq_normalise(x).round(2).tolist()
[[13.29, 0.0], [0.0, 13.29]]
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine

from .interventions import intervene
from .objective import PARTICLE_DIM


def perturbseq_normalise(x):
    """log2(1e4·x/Σx + 1) per cell (numpy or torch)."""
    if isinstance(x, torch.Tensor):
        return torch.log2(1e4 * x / x.sum(-1, keepdim=True).clamp(min=1) + 1)
    x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=float)
    return np.log2(1e4 * x / np.maximum(x.sum(-1, keepdims=True), 1) + 1)


def resample_library(data, n, rng, clean_only=True):
    """Library sizes drawn from the training cells (clean ones by default)."""
    idx = data.indices("train")
    if clean_only and data.n_artifacts:
        clean = idx[data.artifact[idx].sum(1) == 0]
        idx = clean if len(clean) else idx
    return data.library[rng.choice(idx, n, replace=True)]


def generate(model, guide, n_cells: int, *, dosage=None, artifact="clean", library=None,
             num_particles: int = 1, names: dict | None = None, expected: bool = False):
    """Counts of new cells under an intervention; shape (particles, n_cells, genes).

    ``library`` is a tensor of n_cells sizes, or ``None`` to sample the model's
    library prior. With ``expected=True`` the expected counts are returned
    instead of samples.
    """
    names = names or {}
    model_do = intervene(model, dosage=dosage, artifact=artifact, **names)
    device = model.device
    lib = None if library is None else torch.as_tensor(library, dtype=torch.float32, device=device)
    with torch.no_grad(), pyro.plate("particles", num_particles, dim=PARTICLE_DIM):
        guide_trace = poutine.trace(guide).get_trace(n_cells=n_cells)
        trace = poutine.trace(poutine.replay(model_do, trace=guide_trace)).get_trace(
            library=lib, n_cells=n_cells)
    if expected:
        z = trace.nodes["_RETURN"]["value"]
        lib_used = trace.nodes["library"]["value"] if lib is None else lib
        return model.expected_counts(z, lib_used).expand(num_particles, n_cells, -1)
    return trace.nodes["counts"]["value"].expand(num_particles, n_cells, -1)


def _names(data):
    if data is None:
        return {}
    return dict(perturbation_names=data.perturbation_names, artifact_names=data.artifact_names,
                control_label=data.control_label, separator=data.separator)


def sample_cells(model, guide, data, condition: str, n: int = 200, artifact="clean",
                 library=None, seed: int = 0) -> ad.AnnData:
    """``n`` generated cells under ``do(dosage=condition, artifact=artifact)`` as AnnData.

    Counts in ``X``; obs ``perturbation``, ``intervention_artifact`` and ``library``.
    """
    pyro.set_rng_seed(seed)
    rng = np.random.default_rng(seed)
    lib = resample_library(data, n, rng) if library is None else np.broadcast_to(library, (n,))
    counts = generate(model, guide, n, dosage=condition, artifact=artifact, library=lib,
                      names=_names(data))[0].cpu().numpy()
    obs = pd.DataFrame({"perturbation": condition, "intervention_artifact": str(artifact),
                        "library": np.asarray(lib, dtype=float)},
                       index=[f"{condition}_generated{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=data.gene_names))


def mean_normalised_expression(model, guide, data, condition, *, n_cells=2500, chunk=500,
                               artifact="clean", seed=0) -> np.ndarray:
    """Mean perturbseq-normalised expression of generated cells under ``condition``."""
    pyro.set_rng_seed(seed)
    rng = np.random.default_rng(seed)
    total, done = None, 0
    while done < n_cells:
        m = min(chunk, n_cells - done)
        lib = resample_library(data, m, rng)
        x = generate(model, guide, m, dosage=condition, artifact=artifact, library=lib,
                     names=_names(data))
        s = perturbseq_normalise(x).sum((0, 1))
        total = s if total is None else total + s
        done += m
    return (total / n_cells).cpu().numpy()


def model_ate(model, guide, data, perturbations, *, n_cells=2500, chunk=500,
              artifact="clean", seed=0) -> pd.DataFrame:
    """Model ATE of each perturbation (seen or unseen combinations): perturbations × genes.

    Every condition is generated from the same seed (common random numbers).
    """
    base = mean_normalised_expression(model, guide, data, data.control_label, n_cells=n_cells,
                                      chunk=chunk, artifact=artifact, seed=seed)
    rows = [mean_normalised_expression(model, guide, data, p, n_cells=n_cells, chunk=chunk,
                                       artifact=artifact, seed=seed) - base
            for p in perturbations]
    return pd.DataFrame(np.stack(rows), index=list(perturbations), columns=data.gene_names)


def data_ate(data, perturbations=None, split=None, clean_only=False) -> pd.DataFrame:
    """Observed ATE of each condition against control: perturbations × genes.

    ``data`` is a :class:`~cradle_pyro.data.PerturbationData`; ``split`` restricts
    the cells (control cells come from all splits so held-out conditions have a
    reference); ``clean_only`` keeps cells without artifact labels.
    """
    conditions = np.asarray(data.conditions)
    keep = np.ones(data.n_cells, dtype=bool)
    if clean_only and data.n_artifacts:
        keep &= data.artifact.sum(1) == 0
    in_split = keep & (data.split == split) if split is not None else keep
    control = keep & (conditions == data.control_label)
    if perturbations is None:
        perturbations = [c for c in data.condition_names if c != data.control_label
                         and (in_split & (conditions == c)).any()]
    base = perturbseq_normalise(data.counts[np.flatnonzero(control)]).mean(0)
    rows = []
    for p in perturbations:
        cells = np.flatnonzero(in_split & (conditions == p))
        rows.append(perturbseq_normalise(data.counts[cells]).mean(0) - base)
    return pd.DataFrame(np.stack(rows), index=list(perturbations), columns=data.gene_names)


def additive_ate(data, perturbations, split="train") -> pd.DataFrame:
    """The additive baseline: a combination's ATE as the sum of its singles' data ATEs."""
    from cradle_pyro.splits import targets_of

    singles = sorted({t for p in perturbations for t in targets_of(p, data.control_label, data.separator)})
    single_ate = data_ate(data, singles, split=split)
    rows = [single_ate.loc[targets_of(p, data.control_label, data.separator)].sum(0)
            for p in perturbations]
    return pd.DataFrame(np.stack(rows), index=list(perturbations), columns=data.gene_names)
