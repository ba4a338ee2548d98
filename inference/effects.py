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

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine

from cradle_pyro.errors import CradleInputError

from .interventions import counterfactual_library, intervene
from .objective import PARTICLE_DIM
from .seeding import keeps_global_rng

# Posterior draws of the globals behind every ATE by default: with 200 (× 500 cells) four
# posterior seeds moved Norman's held-out r by at most 0.007, with 100 by 0.012
# (benchmarks/results/posterior_seed_stability.json)
NUM_DRAWS = 200
# Generated cells per draw and condition (the Monte Carlo mean over the population)
N_CELLS = 500


def perturbseq_normalise(x):
    """log2(1e4·x/Σx + 1) per cell (numpy or torch)."""
    if isinstance(x, torch.Tensor):
        return torch.log2(1e4 * x / x.sum(-1, keepdim=True).clamp(min=1) + 1)
    x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=float)
    return np.log2(1e4 * x / np.maximum(x.sum(-1, keepdims=True), 1) + 1)


def clean_mask(data) -> np.ndarray:
    """Per cell of ``data``: True where no artifact kind is labelled."""
    if not data.n_artifacts:
        return np.ones(data.n_cells, dtype=bool)
    return data.artifact.sum(1) == 0


def resample_library(data, n, rng, clean_only=True, model=None):
    """Library sizes drawn from the training cells (clean ones by default), and the
    dosage each was observed under: (libraries, dosages).

    A run loaded without its training file knows the cells' libraries and
    (runs saved since library effects) their dosages; without the dosages,
    where ``model`` makes the library a mediator, the sizes could not be moved
    to an intervention, and ``(None, None)`` is returned: the model draws them
    from its own library distribution.
    """
    idx = data.indices("train")
    if clean_only:
        clean = idx[clean_mask(data)[idx]]
        idx = clean if len(clean) else idx
    picked = rng.choice(idx, n, replace=True)
    dosage = data.saved_dosage if getattr(data, "is_stand_in", False) else data.dosage
    if dosage is None:
        return (None, None) if getattr(model, "use_library_effects", False) else (
            data.library[picked], None)
    return data.library[picked], dosage[picked]


def generated_artifact(model, artifact):
    """The artifact intervention of generated cells: ``None`` where the model has no path from
    artifact to counts (every cell is generated the same way, and ``intervene`` would refuse it)."""
    cfg = getattr(model, "config", None)
    return None if cfg is not None and not cfg.artifact_to_decoder else artifact


def generate(model, guide, n_cells: int, *, dosage=None, artifact="clean", library=None,
             num_particles: int = 1, names: dict | None = None, expected: bool = False,
             cells=None, library_dosage=None):
    """Counts of new cells under an intervention; shape (particles, n_cells, genes).

    ``library`` is a tensor of n_cells sizes, or ``None`` to sample the model's
    library prior (under the intervention). ``library_dosage`` (n_cells × P)
    says under which treatment those sizes were observed: where the model
    makes the library a mediator (``library_effects``) each is then moved to
    ``do(dosage)`` (:func:`~cradle_pyro.inference.interventions.counterfactual_library`);
    ``None`` uses them as they are. With ``expected=True`` the expected counts
    are returned instead of samples.

    ``cells`` (a :class:`~cradle_pyro.data.Batch` of observed cells, or
    ``None``) chooses where the basal states come from: ``None`` draws them
    from the prior N(0, I); a batch *abducts* them, drawing each cell's basal
    state from the guide's q(basal | x) given what the cell received (its own
    dosage and artifact state), and then applies the intervention to that same
    cell (Pearl's abduction, action, prediction). ``n_cells`` must then be the
    batch's size, and ``library`` defaults to the cells' own libraries, moved
    to the intervention like any observed library.
    """
    names = names or {}
    model_do = intervene(model, dosage=dosage, artifact=generated_artifact(model, artifact),
                         **names)
    device = model.device
    observed = {}
    if cells is not None:
        if cells.size != n_cells:
            raise ValueError(f"n_cells={n_cells} but {cells.size} cells to abduct from")
        observed = dict(counts=cells.counts, dosage=cells.dosage, artifact=cells.artifact,
                        library=cells.library, qc=cells.qc, flags=cells.flags)
        if library is None:
            library, library_dosage = cells.library, cells.dosage
    lib = None if library is None else torch.as_tensor(library, dtype=torch.float32, device=device)
    with torch.no_grad(), pyro.plate("particles", num_particles, dim=PARTICLE_DIM):
        guide_trace = poutine.trace(guide).get_trace(n_cells=n_cells, **observed)
        if library_dosage is not None:
            lib = counterfactual_library(model, guide_trace, lib, library_dosage, dosage, names)
        trace = poutine.trace(poutine.replay(model_do, trace=guide_trace)).get_trace(
            library=lib, n_cells=n_cells)
    if expected:
        return trace.nodes["counts"]["fn"].mean.expand(num_particles, n_cells, -1)
    return trace.nodes["counts"]["value"].expand(num_particles, n_cells, -1)


def _names(data):
    if data is None:
        return {}
    return dict(perturbation_names=data.perturbation_names, artifact_names=data.artifact_names,
                control_label=data.control_label, separator=data.separator)


@keeps_global_rng
def sample_cells(model, guide, data, condition: str, n: int = 200, artifact="clean",
                 library=None, seed: int = 0, globals: str = "per-cell") -> ad.AnnData:
    """``n`` generated cells under ``do(dosage=condition, artifact=artifact)`` as AnnData.

    Counts in ``X``; obs ``perturbation``, ``intervention_artifact`` and ``library``:
    the size drawn from a training cell, before the condition's library effect
    moves it (where the model has library effects the cell is generated at the
    moved size, per draw); for a run loaded without its cells' conditions, the
    generated cells' totals (the model drew their sizes).

    ``globals`` says how the global latents (effects, masks, artifact effects)
    are drawn from the guide's posterior: ``"per-cell"`` (default) gives every
    cell its own draw, so the cells are draws of the posterior predictive and
    their spread includes the uncertainty about the effects; ``"one-draw"``
    uses one draw for all cells (one plausible world, cells differ only in
    basal state, library and count noise).
    """
    if globals not in ("per-cell", "one-draw"):
        raise ValueError(f"globals={globals!r}; use 'per-cell' or 'one-draw'")
    pyro.set_rng_seed(seed)
    rng = np.random.default_rng(seed)
    if library is None:
        lib, lib_dosage = resample_library(data, n, rng, model=model)
    else:
        lib, lib_dosage = np.broadcast_to(library, (n,)), None
    if globals == "per-cell":  # a particle per cell, each particle holds one cell
        counts = generate(model, guide, 1, dosage=condition, artifact=artifact,
                          library=None if lib is None else np.asarray(lib)[:, None],
                          num_particles=n, names=_names(data),
                          library_dosage=None if lib_dosage is None else lib_dosage[:, None])
        counts = counts[:, 0].cpu().numpy()
    else:
        counts = generate(model, guide, n, dosage=condition, artifact=artifact, library=lib,
                          names=_names(data), library_dosage=lib_dosage)[0].cpu().numpy()
    if lib is None:  # drawn by the model: report the generated cells' totals
        lib = counts.sum(1)
    obs = pd.DataFrame({"perturbation": condition, "intervention_artifact": str(artifact),
                        "library": np.asarray(lib, dtype=float)},
                       index=[f"{condition}_generated{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=data.gene_names))


BASAL_SOURCES = ("abducted", "prior")
MAX_ELEMENTS = 20_000_000  # generated counts held at once: draws are chunked below it


def abduction_cells(data, split: str = "train") -> np.ndarray:
    """Positions of the cells whose basal states the ATE averages over: clean cells of ``split``.

    Artifact cells are left out so that a misread artifact cannot distort the
    basal states; any treatment is fine, since the basal state is exogenous.
    """
    idx = data.indices(split)
    clean = idx[clean_mask(data)[idx]]
    if not len(clean):
        raise ValueError(f"no clean cells in split {split!r} to abduct basal states from; "
                         "use basal='prior'")
    return clean


@keeps_global_rng
def condition_draws(model, guide, data, condition, *, num_draws: int = NUM_DRAWS,
                    n_cells: int = N_CELLS, artifact="clean", seed: int = 0,
                    max_elements: int = MAX_ELEMENTS, basal: str = "abducted") -> np.ndarray:
    """Mean perturbseq-normalised expression under ``condition``, one row per posterior draw.

    Each of ``num_draws`` draws of the globals from the guide generates
    ``n_cells`` cells (counts sampled); draws are vectorised as particles, in
    chunks of at most ``max_elements`` generated counts. Returns (draws, genes).
    The same ``seed`` gives the same globals, basal states and libraries for
    every condition (common random numbers), so differences isolate the
    condition.

    ``basal`` says which cells the mean is over:

    - ``"abducted"`` (default): ``n_cells`` clean training cells drawn at random
      (:func:`abduction_cells`), each with its basal state drawn from the
      guide's q(basal | x) and its own library, then put under ``condition``:
      the mean over the screen's own population of cells;
    - ``"prior"``: new cells with basal states from the prior N(0, I) and
      libraries resampled from clean training cells.

    The two differ where the prior is not the population: real basal states
    cluster (cell cycle, cell states), and an effect measured through a
    nonlinear decoder depends on where the cells sit. On simulated screens
    (basal states in four clusters, 2 screens × 3 seeds) abduction raised the
    ATE r against the truth on every seed (0.969 → 0.974, 0.960 → 0.971) and
    lowered the error on five of six; the prior's effects came out about 8 %
    too large, abduction's about 10 % too small
    (``benchmarks/results/basal_source_sim.json``).
    """
    return _cell_means(model, guide, data, condition, num_draws=num_draws, n_cells=n_cells,
                       artifact=artifact, seed=seed, max_elements=max_elements, basal=basal)[0]


def _cell_means(model, guide, data, condition, *, num_draws, n_cells, artifact, seed,
                max_elements=MAX_ELEMENTS, basal="abducted", parts=()) -> np.ndarray:
    """(1 + len(parts), draws, genes): the mean over all ``n_cells`` generated cells, then over
    each ``(start, stop)`` range of them (disjoint ranges are independent sets of cells that
    share the draw's globals)."""
    if basal not in BASAL_SOURCES:
        raise ValueError(f"basal={basal!r}; use one of {BASAL_SOURCES}")
    if basal == "abducted" and getattr(data, "is_stand_in", False):
        raise CradleInputError(
            "ATEs over the screen's own cells (basal='abducted', the default) need the training "
            "cells' counts, and the run's training file is not available; pass the training "
            "AnnData (load_run(run, adata=...)), or average over new cells from the prior "
            "(basal='prior'; cradle-pyro effects --basal prior)")
    pyro.set_rng_seed(seed)
    rng = np.random.default_rng(seed)
    pool = abduction_cells(data) if basal == "abducted" else None
    chunk = max(1, min(num_draws, max_elements // max(1, n_cells * data.n_genes)))
    rows = []
    for start in range(0, num_draws, chunk):
        s = min(chunk, num_draws - start)
        if pool is None:
            cells, (lib, lib_dosage) = None, resample_library(data, n_cells, rng, model=model)
        else:
            picked = rng.choice(pool, n_cells, replace=len(pool) < n_cells)
            cells, lib, lib_dosage = data.batch(picked, device=model.device), None, None
        x = generate(model, guide, n_cells, dosage=condition, artifact=artifact, library=lib,
                     num_particles=s, names=_names(data), cells=cells, library_dosage=lib_dosage)
        y = perturbseq_normalise(x)
        rows.append(np.stack([y.mean(1).cpu().numpy()]
                             + [y[:, a:b].mean(1).cpu().numpy() for a, b in parts]))
    return np.concatenate(rows, axis=1)


@dataclass
class PosteriorATE:
    """Posterior of model ATEs: per-draw values and their summaries.

    Attributes
    ----------
    draws
        (perturbations, draws, genes): ATE under each posterior draw of the globals.
    perturbations, genes
        Labels of the first and last axes.
    interval
        Mass of the central credible interval (0.9: 5 % and 95 % quantiles).
    """

    draws: np.ndarray
    perturbations: list
    genes: list
    interval: float = 0.9

    def _frame(self, values) -> pd.DataFrame:
        return pd.DataFrame(values, index=list(self.perturbations), columns=list(self.genes))

    @property
    def mean(self) -> pd.DataFrame:
        """Posterior mean ATE (perturbations × genes)."""
        return self._frame(self.draws.mean(1))

    @property
    def lower(self) -> pd.DataFrame:
        return self._frame(np.quantile(self.draws, (1 - self.interval) / 2, axis=1))

    @property
    def upper(self) -> pd.DataFrame:
        return self._frame(np.quantile(self.draws, (1 + self.interval) / 2, axis=1))

    @property
    def prob_increase(self) -> pd.DataFrame:
        """Posterior probability that the perturbation raises the gene."""
        return self._frame((self.draws > 0).mean(1))

    @property
    def prob_decrease(self) -> pd.DataFrame:
        return self._frame((self.draws < 0).mean(1))

    def to_long(self) -> pd.DataFrame:
        """One row per (perturbation, gene): ``perturbation``, ``gene``, ``mean``,
        ``lower``, ``upper`` (the central ``interval`` credible interval),
        ``prob_increase``, ``prob_decrease``, ``interval``. The layout of
        ``cradle-pyro effects``' CSV."""
        parts = {"mean": self.mean, "lower": self.lower, "upper": self.upper,
                 "prob_increase": self.prob_increase, "prob_decrease": self.prob_decrease}
        long = pd.concat({k: v.stack() for k, v in parts.items()}, axis=1)
        long.index.names = ["perturbation", "gene"]
        long = long.reset_index()
        long["interval"] = self.interval
        return long


INTERVAL_KINDS = ("ate", "observed")


def posterior_ate(model, guide, data, perturbations, *, num_draws: int = NUM_DRAWS,
                  n_cells: int = N_CELLS, artifact="clean", seed: int = 0,
                  interval: float = 0.9, basal: str = "abducted", kind: str = "ate",
                  observed_cells: dict | None = None) -> PosteriorATE:
    """Posterior of the model ATE of each perturbation (seen or unseen combinations).

    For each of ``num_draws`` posterior draws of the globals, ``n_cells``
    cells are put under the perturbation and under control, both made clean
    (``do(artifact=clean)`` by default), with common random numbers
    (:func:`condition_draws`); the draw's ATE is the difference of their mean
    perturbseq-normalised expression. ``basal="abducted"`` (default) takes the
    cells from the screen itself (clean training cells, basal states drawn from
    q(basal | x)): the ATE over the screen's population; ``"prior"`` makes new
    cells from the prior N(0, I). The spread over draws is the posterior
    uncertainty about the effects and the basal states plus the Monte Carlo
    noise of ``n_cells`` cells; the default number of draws is :data:`NUM_DRAWS`.

    ``kind`` says which quantity the draws (and so the interval) are of:

    - ``"ate"`` (default): the population ATE, the estimand (expected
      log-normalised expression, count noise and cells averaged out over
      ``n_cells`` generated cells): a credible interval;
    - ``"observed"``: the ATE *as observed* from finitely many cells, a
      predictive interval for comparing with data. ``observed_cells`` maps
      each perturbation to ``(n_condition, n_control)``, the numbers of cells
      the observed ATE averages; each draw's value is the mean of
      ``n_condition`` generated cells under the perturbation minus the mean
      of ``n_control`` *other* generated control cells, counts sampled, under
      the same posterior draw of the globals. The mean over draws estimates
      the same ATE; the interval adds the sampling noise of the finite cells.

    Example
    -------
    >>> from cradle_pyro import simulate_screen, PerturbationData
    >>> from cradle_pyro.inference import TrainConfig, fit
    >>> data = PerturbationData.from_anndata(simulate_screen(300, 40, seed=0), doublets=False)
    >>> run = fit(data, TrainConfig(epochs=1, progress=False))
    >>> post = posterior_ate(run.model, run.guide, data, ["P0"], num_draws=20, n_cells=20)
    >>> post.draws.shape, list(post.to_long().columns)[:4]
    ((1, 20, 40), ['perturbation', 'gene', 'mean', 'lower'])
    """
    if num_draws < 1 or n_cells < 1:
        raise ValueError(f"num_draws={num_draws}, n_cells={n_cells}: both must be at least 1")
    if not 0 < interval < 1:
        raise ValueError(f"interval={interval}; a credible mass strictly between 0 and 1")
    if kind not in INTERVAL_KINDS:
        raise ValueError(f"kind={kind!r}; use one of {INTERVAL_KINDS}")
    kw = dict(num_draws=num_draws, n_cells=n_cells, artifact=artifact, seed=seed, basal=basal)
    if kind == "ate":
        base = condition_draws(model, guide, data, data.control_label, **kw)
        draws = np.stack([condition_draws(model, guide, data, p, **kw) - base
                          for p in perturbations])
        return PosteriorATE(draws, list(perturbations), list(data.gene_names), interval)
    sizes = _observed_sizes(perturbations, observed_cells)
    kw["n_cells"] = max(n_cells, max(a + b for a, b in sizes))  # room for disjoint cell sets
    control = _cell_means(model, guide, data, data.control_label,
                          parts=[(a, a + b) for a, b in sizes], **kw)
    draws = np.stack([
        _cell_means(model, guide, data, p, parts=[(0, a)], **kw)[1]
        - control[1 + i] for i, (p, (a, b)) in enumerate(zip(perturbations, sizes))])
    return PosteriorATE(draws, list(perturbations), list(data.gene_names), interval)


def _observed_sizes(perturbations, observed_cells) -> list:
    if not observed_cells or any(p not in observed_cells for p in perturbations):
        missing = [p for p in perturbations if p not in (observed_cells or {})]
        raise ValueError(f"kind='observed' needs observed_cells[p] = (n_condition, n_control) "
                         f"for every perturbation; missing {missing[:5]}")
    sizes = [tuple(int(v) for v in observed_cells[p]) for p in perturbations]
    if any(a < 1 or b < 1 for a, b in sizes):
        raise ValueError(f"observed_cells: every count must be at least 1, got {sizes}")
    return sizes


def model_ate(model, guide, data, perturbations, *, num_draws: int = NUM_DRAWS,
              n_cells: int = N_CELLS, artifact="clean", seed: int = 0,
              basal: str = "abducted") -> pd.DataFrame:
    """Posterior mean model ATE (perturbations × genes); see :func:`posterior_ate`."""
    return posterior_ate(model, guide, data, perturbations, num_draws=num_draws, n_cells=n_cells,
                         artifact=artifact, seed=seed, basal=basal).mean


def data_ate(data, perturbations=None, split=None, clean_only=False) -> pd.DataFrame:
    """Observed ATE of each condition against control: perturbations × genes.

    ``data`` is a :class:`~cradle_pyro.data.PerturbationData`; ``split`` restricts
    the cells (control cells come from all splits so held-out conditions have a
    reference); ``clean_only`` keeps cells without artifact labels.
    """
    conditions = np.asarray(data.conditions)
    keep = clean_mask(data) if clean_only else np.ones(data.n_cells, dtype=bool)
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
