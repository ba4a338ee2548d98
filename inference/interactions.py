"""Genetic interactions as a posterior query.

The interaction of a pair A+B on a gene is how far its effect is from the sum of
its singles', in the ATE's own units (log2 CP10k)::

    interaction(A+B) = ATE(A+B) − ATE(A) − ATE(B)

:func:`interaction_posterior` computes it under every posterior draw of the
globals. The ATEs of A+B, A, B and control come from the same draws, basal
states and libraries (common random numbers, :func:`~cradle_pyro.inference.effects.posterior_ate`),
so the difference isolates the interaction rather than Monte Carlo noise. By
default the ATEs come from the query engine
(:func:`~cradle_pyro.inference.screen_queries.batched_ate`: all conditions
batched, count noise integrated), which answers every pair of a hundred
singles in minutes. ``estimator="sampled"`` uses the per-condition sampled
estimator instead. Per
pair, :meth:`PosteriorInteraction.summary` reads it as a biologist would:

- ``ratio``: the interaction's size over the additive prediction's
  (L2 norms over genes), its posterior mean and interval;
- ``direction``: ``synergy`` when the pair moves the genes further than the sum
  of its singles along the additive direction (projection of the interaction on
  the additive prediction > 0), ``buffering`` when less; ``prob_synergy``;
- ``prob_interacting``: the posterior probability that ``ratio`` exceeds ``tau``.

Each draw's ATEs carry the Monte Carlo noise of ``n_cells`` generated cells, and
a norm over genes turns that noise into size: ``ratio`` and ``magnitude`` read
high when ``n_cells`` is small (compare pairs at the same settings; raise
``n_cells`` to shrink the floor). The per-gene interaction and its interval
have no such bias.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(300, 40, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> post = interaction_posterior([run], data, ["P0+P1"], num_draws=20, n_cells=20)
>>> post.draws.shape, list(post.summary().columns)[:3]
((1, 20, 40), ['pair', 'ratio', 'ratio_lower'])
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cradle_pyro.errors import CradleInputError
from cradle_pyro.splits import targets_of

from .effects import data_ate
from .ensembles import ensemble_ate
from .screen_queries import ESTIMATORS

TAU = 0.2  # an interaction a fifth the size of the additive prediction is worth a look
GENE_TAU = 0.1  # per gene, in log2 CP10k: a tenth of a log2 unit
BLOCK_ELEMENTS = 20_000_000  # draws × genes × pairs computed at once
KEEP_ELEMENTS = 50_000_000  # keep every draw (``draws``, ``additive``) up to this size by default


def all_pairs(data) -> list:
    """Every pair ``A+B`` of the run's single targets (in the data's separator)."""
    return [data.separator.join(p) for p in itertools.combinations(data.perturbation_names, 2)]


@dataclass
class PosteriorInteraction:
    """Posterior of ``ATE(A+B) − ATE(A) − ATE(B)`` per pair and gene.

    Pairs are computed in blocks and reduced as they come, so a screen-wide
    query never holds every draw: per pair and gene the posterior mean, the
    central ``interval`` and the probabilities (``gene_stats``), and per pair
    and draw the interaction's size, its size over the additive prediction's
    and its projection on it (``pair_draws``). ``draws`` and ``additive``
    (pairs × draws × genes) are kept when asked for (``keep_draws``; by default
    up to :data:`KEEP_ELEMENTS` values). ``observed`` holds the screen's own
    interaction for the pairs it measured.
    """

    perturbations: list
    genes: list
    interval: float
    gene_stats: dict
    pair_draws: dict
    draws: np.ndarray | None = None
    additive: np.ndarray | None = None
    observed: pd.DataFrame | None = None
    tau: float = TAU
    gene_tau: float = GENE_TAU

    def _frame(self, values) -> pd.DataFrame:
        return pd.DataFrame(values, index=list(self.perturbations), columns=list(self.genes))

    @property
    def mean(self) -> pd.DataFrame:
        """Posterior mean interaction (pairs × genes)."""
        return self._frame(self.gene_stats["mean"])

    @property
    def lower(self) -> pd.DataFrame:
        return self._frame(self.gene_stats["lower"])

    @property
    def upper(self) -> pd.DataFrame:
        return self._frame(self.gene_stats["upper"])

    def to_long(self) -> pd.DataFrame:
        """One row per (pair, gene): ``perturbation`` (the pair), ``gene``, ``mean``, ``lower``,
        ``upper``, ``prob_increase``, ``prob_decrease``, ``interval``, and ``prob_beyond``,
        the posterior probability that the interaction exceeds ``gene_tau`` in absolute
        value."""
        names = ["mean", "lower", "upper", "prob_increase", "prob_decrease"]
        long = pd.concat({k: self._frame(self.gene_stats[k]).stack() for k in names}, axis=1)
        long.index.names = ["perturbation", "gene"]
        long = long.reset_index()
        long["interval"] = self.interval
        long["prob_beyond"] = self.gene_stats["prob_beyond"].ravel()
        long["gene_tau"] = self.gene_tau
        return long

    def summary(self) -> pd.DataFrame:
        """One row per pair, ranked by the posterior probability of interacting."""
        size, ratio, along = (np.asarray(self.pair_draws[k], dtype=float)
                              for k in ("size", "ratio", "along"))
        lo, hi = (1 - self.interval) / 2, (1 + self.interval) / 2
        table = pd.DataFrame({
            "pair": list(self.perturbations),
            "ratio": ratio.mean(1), "ratio_lower": np.quantile(ratio, lo, axis=1),
            "ratio_upper": np.quantile(ratio, hi, axis=1),
            "magnitude": size.mean(1),
            "prob_interacting": (ratio > self.tau).mean(1),
            "prob_synergy": (along > 0).mean(1),
        })
        table["direction"] = np.where(table["prob_synergy"] >= 0.5, "synergy", "buffering")
        if self.observed is not None:
            obs = self.observed.reindex(list(self.perturbations)).astype(float)
            table["observed_magnitude"] = np.linalg.norm(obs.to_numpy(), axis=1)
            table["observed_r"] = [_pearson(self.mean.loc[p], obs.loc[p]) for p in self.perturbations]
        table["tau"] = self.tau
        return table.sort_values(["prob_interacting", "ratio"], ascending=False,
                                 ignore_index=True)


def _reduce(joint, additive, interval, gene_tau) -> tuple:
    """Per-gene and per-draw statistics of the interaction draws of a block of pairs."""
    inter = joint - additive
    lo, hi = np.quantile(inter, [(1 - interval) / 2, (1 + interval) / 2], axis=1)
    genes = {"mean": inter.mean(1), "lower": lo, "upper": hi,
             "prob_increase": (inter > 0).mean(1), "prob_decrease": (inter < 0).mean(1),
             "prob_beyond": (np.abs(inter) > gene_tau).mean(1)}
    size = np.linalg.norm(inter, axis=-1)
    draws = {"size": size,
             "ratio": size / np.maximum(np.linalg.norm(additive, axis=-1), 1e-12),
             "along": (inter * additive).sum(-1)}  # > 0: further than additive
    return inter, genes, draws


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not np.isfinite(b).all() or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _check_pairs(pairs, data) -> list:
    checked = []
    for pair in pairs:
        targets = targets_of(pair, data.control_label, data.separator)
        if len(targets) != 2:
            raise CradleInputError(f"{pair!r} is not a pair A{data.separator}B; an interaction "
                                   "is between two targets")
        data.dosage_of(pair)  # refuses a target the run never saw, naming the known ones
        checked.append(data.separator.join(targets))
    return checked


def observed_interactions(data, pairs) -> pd.DataFrame:
    """``ATE(A+B) − ATE(A) − ATE(B)`` of the data's clean cells for the pairs it measured."""
    measured = [p for p in pairs if p in set(data.condition_names)]
    if not measured or getattr(data, "is_stand_in", False):
        return pd.DataFrame(columns=data.gene_names)
    singles = sorted({t for p in measured for t in targets_of(p, data.control_label, data.separator)})
    ate = data_ate(data, measured + singles, clean_only=True)
    return pd.DataFrame({p: ate.loc[p] - sum(ate.loc[t] for t in targets_of(
        p, data.control_label, data.separator)) for p in measured}).T


def interaction_posterior(runs, data, pairs, *, estimator: str = "batched",
                          num_draws: int | None = None, n_cells: int | None = None,
                          seed: int = 0, interval: float = 0.9, tau: float = TAU,
                          gene_tau: float = GENE_TAU, basal: str = "abducted",
                          keep_draws: bool | None = None, progress=None) -> PosteriorInteraction:
    """The posterior interaction of each pair (``runs``: one run or an ensemble's members).

    ``estimator`` picks how the ATEs are computed: ``"batched"`` (default, the
    query engine; ``num_draws``/``n_cells`` default to its
    :data:`~cradle_pyro.inference.screen_queries.ENGINE_DRAWS` ×
    :data:`~cradle_pyro.inference.screen_queries.ENGINE_CELLS`) or
    ``"sampled"`` (:func:`~cradle_pyro.inference.effects.posterior_ate`,
    :data:`~cradle_pyro.inference.effects.NUM_DRAWS` ×
    :data:`~cradle_pyro.inference.effects.N_CELLS`). The singles are computed
    once; the pairs follow in blocks with the same seed, so every condition
    shares the draws and cells (common random numbers). ``progress`` is called
    with the number of conditions done.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; use one of {list(ESTIMATORS)}")
    fn, default_draws, default_cells = ESTIMATORS[estimator]
    num_draws, n_cells = num_draws or default_draws, n_cells or default_cells
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    pairs = _check_pairs(pairs, data)
    targets = [targets_of(p, data.control_label, data.separator) for p in pairs]
    singles = sorted({t for pair in targets for t in pair})

    def ate(conditions):
        return ensemble_ate(runs, data, conditions, num_draws=num_draws, n_cells=n_cells,
                            seed=seed, interval=interval, basal=basal, estimator=fn).draws

    single_draws = ate(singles)
    row = {t: i for i, t in enumerate(singles)}
    index = np.array([[row[a], row[b]] for a, b in targets], dtype=int)
    done = len(singles) + 1
    if progress is not None:
        progress(done)
    keep = (keep_draws if keep_draws is not None
            else len(pairs) * num_draws * data.n_genes <= KEEP_ELEMENTS)
    block = _block_size(num_draws, data.n_genes)
    genes, per_draw, kept = [], [], []
    for start in range(0, len(pairs), block):
        rows = slice(start, start + block)
        additive = single_draws[index[rows, 0]] + single_draws[index[rows, 1]]
        inter, g, d = _reduce(ate(pairs[rows]), additive, interval, gene_tau)
        genes.append(g)
        per_draw.append(d)
        if keep:
            kept.append((inter, additive))
        done += len(pairs[rows]) + 1  # each block recomputes control for its ATEs
        if progress is not None:
            progress(done)
    return PosteriorInteraction(
        pairs, list(data.gene_names), interval,
        gene_stats={k: np.concatenate([g[k] for g in genes]) for k in genes[0]},
        pair_draws={k: np.concatenate([d[k] for d in per_draw]) for k in per_draw[0]},
        draws=np.concatenate([i for i, _ in kept]) if keep else None,
        additive=np.concatenate([a for _, a in kept]) if keep else None,
        observed=observed_interactions(data, pairs), tau=tau, gene_tau=gene_tau)


def conditions_computed(pairs, n_draws: int, n_genes: int, separator: str = "+") -> int:
    """How many conditions :func:`interaction_posterior` computes for ``pairs`` (for progress)."""
    singles = {t for p in pairs for t in p.split(separator)}
    return len(singles) + 1 + len(pairs) + -(-len(pairs) // _block_size(n_draws, n_genes))


def _block_size(num_draws: int, n_genes: int) -> int:
    """Pairs per block: at most :data:`BLOCK_ELEMENTS` draws × genes × pairs at once."""
    return max(1, BLOCK_ELEMENTS // (num_draws * n_genes))


def interaction_figure(summary: pd.DataFrame, path, top: int = 30):
    """The pairs ranked by the posterior interaction ratio, with intervals."""
    from matplotlib.figure import Figure

    from .outputs import save_figure

    shown = summary.sort_values("ratio", ascending=True).tail(top)
    fig = Figure(figsize=(6, max(2.5, 0.28 * len(shown) + 1)))
    ax = fig.subplots()
    y = np.arange(len(shown))
    colours = np.where(shown["direction"] == "synergy", "tab:red", "tab:blue")
    ax.hlines(y, shown["ratio_lower"], shown["ratio_upper"], color=colours, lw=2)
    ax.scatter(shown["ratio"], y, color=colours, zorder=3, s=16)
    ax.axvline(summary["tau"].iloc[0], color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, shown["pair"], fontsize=7)
    ax.set_xlabel("|interaction| / |additive prediction| (posterior mean, interval)")
    ax.set_title("red: synergy, blue: buffering; dashed: tau", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


__all__ = ["PosteriorInteraction", "all_pairs", "conditions_computed", "interaction_figure",
           "interaction_posterior",
           "observed_interactions"]
