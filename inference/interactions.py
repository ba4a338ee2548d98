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

from .effects import N_CELLS, NUM_DRAWS, PosteriorATE, data_ate, posterior_ate
from .ensembles import ensemble_ate
from .screen_queries import ENGINE_CELLS, ENGINE_DRAWS, batched_ate

TAU = 0.2  # an interaction a fifth the size of the additive prediction is worth a look
GENE_TAU = 0.1  # per gene, in log2 CP10k: a tenth of a log2 unit
# estimator name → (ATE function, default draws, default cells per draw)
ESTIMATORS = {"batched": (batched_ate, ENGINE_DRAWS, ENGINE_CELLS),
              "sampled": (posterior_ate, NUM_DRAWS, N_CELLS)}
BLOCK = 256  # pairs summarised at once (bounds the temporaries of a screen-wide query)


def all_pairs(data) -> list:
    """Every pair ``A+B`` of the run's single targets (in the data's separator)."""
    return [data.separator.join(p) for p in itertools.combinations(data.perturbation_names, 2)]


@dataclass
class PosteriorInteraction(PosteriorATE):
    """Posterior of ``ATE(A+B) − ATE(A) − ATE(B)`` per pair and gene (draws as in
    :class:`~cradle_pyro.inference.effects.PosteriorATE`), with the singles' ATE
    draws beside it (``singles``; ``pair_index`` gives each pair's two rows, so
    ``additive`` is their sum) and the pairs' observed interactions where the
    screen measured them (``observed``)."""

    singles: np.ndarray | None = None
    pair_index: np.ndarray | None = None
    observed: pd.DataFrame | None = None
    tau: float = TAU
    gene_tau: float = GENE_TAU

    def additive_block(self, rows) -> np.ndarray:
        """The additive prediction ``ATE(A) + ATE(B)`` of the pairs at ``rows``, draw by draw."""
        a, b = self.pair_index[rows].T
        return self.singles[a] + self.singles[b]

    @property
    def additive(self) -> np.ndarray:
        """(pairs, draws, genes): the additive prediction of every pair."""
        return self.additive_block(slice(None))

    def to_long(self) -> pd.DataFrame:
        """One row per (pair, gene): the ATE table's columns (``perturbation`` is the pair)
        and ``prob_beyond``, the posterior probability that the interaction exceeds
        ``gene_tau`` in absolute value."""
        long = super().to_long()
        long["prob_beyond"] = (np.abs(self.draws) > self.gene_tau).mean(1).ravel()
        long["gene_tau"] = self.gene_tau
        return long

    def summary(self) -> pd.DataFrame:
        """One row per pair, ranked by the posterior probability of interacting."""
        size, ratio, along = (np.empty(self.draws.shape[:2]) for _ in range(3))
        for start in range(0, len(self.draws), BLOCK):
            rows = slice(start, start + BLOCK)
            additive, joint = self.additive_block(rows), self.draws[rows]
            size[rows] = np.linalg.norm(joint, axis=-1)
            ratio[rows] = size[rows] / np.maximum(np.linalg.norm(additive, axis=-1), 1e-12)
            along[rows] = (joint * additive).sum(-1)  # > 0: further than additive
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
                          basal: str = "abducted", progress=None) -> PosteriorInteraction:
    """The posterior interaction of each pair (``runs``: one run or an ensemble's members).

    ``estimator`` picks how the ATEs are computed: ``"batched"`` (default, the
    query engine; ``num_draws``/``n_cells`` default to its
    :data:`~cradle_pyro.inference.screen_queries.ENGINE_DRAWS` ×
    :data:`~cradle_pyro.inference.screen_queries.ENGINE_CELLS`) or
    ``"sampled"`` (:func:`~cradle_pyro.inference.effects.posterior_ate`,
    :data:`~cradle_pyro.inference.effects.NUM_DRAWS` ×
    :data:`~cradle_pyro.inference.effects.N_CELLS`). ``progress`` (batched
    only) is called with the number of conditions done.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; use one of {list(ESTIMATORS)}")
    fn, default_draws, default_cells = ESTIMATORS[estimator]
    extra = {"progress": progress} if estimator == "batched" else {}
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    pairs = _check_pairs(pairs, data)
    targets = [targets_of(p, data.control_label, data.separator) for p in pairs]
    singles = sorted({t for pair in targets for t in pair})
    post = ensemble_ate(runs, data, pairs + singles, num_draws=num_draws or default_draws,
                        n_cells=n_cells or default_cells, seed=seed, interval=interval,
                        basal=basal, estimator=fn, **extra)
    row = {t: i for i, t in enumerate(singles)}
    index = np.array([[row[a], row[b]] for a, b in targets], dtype=int)
    joint, single_draws = post.draws[:len(pairs)], post.draws[len(pairs):]  # views, no copies
    result = PosteriorInteraction(joint, pairs, list(data.gene_names), interval,
                                  singles=single_draws, pair_index=index,
                                  observed=observed_interactions(data, pairs), tau=tau)
    for start in range(0, len(pairs), BLOCK):  # in place: the joint ATE becomes the interaction
        rows = slice(start, start + BLOCK)
        joint[rows] -= result.additive_block(rows)
    return result


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


__all__ = ["PosteriorInteraction", "all_pairs", "interaction_figure", "interaction_posterior",
           "observed_interactions"]
