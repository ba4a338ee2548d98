"""Abduction of the artifact state: each cell's posterior probability of each artifact kind.

For a model whose artifact state is latent (``ModelConfig(artifact_state="latent")``,
:mod:`cradle_pyro.artifact_state`), the posterior of a cell's K causes is
computed exactly over the 2^K joint states, from one of two bodies of evidence
(``abduct_from``):

``"qc"`` (default)
    p(artifact | QC flags, QC covariates) alone: the guide's own factor, a
    *cut* under which the counts do not inform the state (except through the
    guide's estimate of the basal state, which the covariates' biological part
    reads). Training uses this one (see :class:`~cradle_pyro.guides.ArtifactGuide`:
    with the counts in q during training the causes turned into clusters of
    biological states).
``"counts+qc"``
    p(artifact | counts, QC) ∝ p(artifact) · p(counts, QC | artifact), where
    p(counts, QC | artifact = s) = ∫ p(counts | basal, s) p(QC | basal, s) p(basal) d basal
    is estimated by importance sampling with the guide's q(basal | counts, s) as
    proposal (:func:`state_log_evidence`; ``num_particles`` draws, the globals
    shared by all states). The QC covariates have a biological part (they
    follow the basal state, :mod:`cradle_pyro.artifact_state`), so a cell's
    profile says how much of its QC tail is its biology: the profile itself
    can clear a clean cell whose QC covariates sit in a damaged-looking tail,
    or convict a damaged cell that QC missed. The counts enter only at query
    time, with the trained model.

The default was chosen on simulated screens with clean twins
(``benchmarks/latent_artifacts.py``): with the model as it stands, the counts'
evidence (tens of nats per cell) overrules the QC evidence and pushed clean
cells into the causes more often than it cleared them.

:func:`artifact_posterior` returns both beside the k·MAD flags, and
:func:`add_artifact_posterior` writes them to an AnnData's ``obs``.
Counterfactual cleaning (:func:`cradle_pyro.inference.counterfactuals.counterfactual`
with ``artifact="clean"``) draws each cell's artifact state from the chosen
posterior during abduction (:class:`ArtifactAbduction` swaps it into the
guide), then its basal state given that state.

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

import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from cradle_pyro.distributions import BinaryStates, bernoulli_pmf, binary_states
from cradle_pyro.errors import CradleInputError
from cradle_pyro.guides import ArtifactGuide, guide_part

from .outputs import save_figure
from .seeding import keeps_global_rng

ABDUCT_FROM = ("qc", "counts+qc")
DEFAULT_ABDUCT_FROM = "qc"
# column prefixes of the two posteriors side by side (artifact_posterior)
SIDE_BY_SIDE = {"qc": "qc_", "counts+qc": "counts_qc_"}
NUM_PARTICLES = 8
CHUNK_ELEMENTS = 16_000_000
# the model's sites that weigh a joint artifact state: the counts, the QC evidence, the basal prior
EVIDENCE_SITES = ("counts", "qc", "artifact_flag", "basal")
# keys of the model's call that are not per-cell tensors (a tiled call predicts every row)
_UNTILED = {"cell_index": None, "num_cells": None, "reference": None}


class ArtifactAbduction(Messenger):
    """Draw the guide's ``artifact`` site from ``fn`` instead of the guide's own factor.

    ``fn`` is a distribution over the (…, cells, K) artifact vectors: the
    counts-informed posterior (a :class:`~cradle_pyro.distributions.BinaryStates`)
    for abduction, or a ``Delta`` to evaluate one state. The site stays a
    sampled site, so the guide trace replays into the model as before, and
    q(basal | counts, artifact) then reads the state drawn here.
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def _pyro_sample(self, msg):
        if msg["name"] == "artifact" and not msg["is_observed"]:
            # the plates inside have broadcast the guide's own factor: match its batch shape
            shape = torch.broadcast_shapes(msg["fn"].batch_shape, self.fn.batch_shape)
            msg["fn"] = self.fn.expand(shape)


def _artifact_guide(model, guide) -> ArtifactGuide:
    if not model.config.latent_artifacts:
        raise CradleInputError(
            "this model observes the artifact state (its QC flags are the state): there is no "
            "posterior to report; train with artifact_state='latent' (--artifact-state latent)")
    part = guide_part(guide, lambda g: isinstance(g, ArtifactGuide))
    if part is None:
        raise CradleInputError("the guide has no ArtifactGuide part: add one to it "
                               "(cradle_pyro.guides.ArtifactGuide)")
    return part


def qc_log_posterior(model, guide, kwargs) -> torch.Tensor:
    """log q(artifact = s | QC flags, QC covariates), (cells, 2^K): the guide's own factor,
    the cut posterior of the QC part (given the guide's draw of the flags' rates and its
    estimate of the basal state, which the covariates' biological part reads)."""
    _artifact_guide(model, guide)
    trace = poutine.trace(guide).get_trace(**dict(kwargs, **_UNTILED))
    return trace.nodes["artifact"]["fn"].logits


def state_log_evidence(model, guide, kwargs, num_particles: int = NUM_PARTICLES) -> torch.Tensor:
    """log p(counts, QC | artifact = s) per cell and joint state s, (cells, 2^K).

    An importance-weighted estimate: for each of ``num_particles`` draws of the
    globals from the guide (shared by all states, so the states are compared on
    common random numbers), basal ~ q(basal | counts, s) and the weight
    p(counts, QC | basal, s) p(basal) / q(basal | counts, s); the log of the mean
    weight. The cells are tiled once per state and the particles vectorised
    (in chunks of about :data:`CHUNK_ELEMENTS` count-matrix entries), so a few
    guide and model passes serve all 2^K states.
    """
    counts = kwargs["counts"]
    n, G = counts.shape[-2:]
    states = binary_states(model.n_artifacts, counts.device, counts.dtype)
    S = states.shape[0]
    tiled = {k: (v.repeat(S, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v)
             for k, v in kwargs.items()}
    tiled.update(_UNTILED)
    fixed = dist.Delta(states.repeat_interleave(n, 0), event_dim=1)
    chunk = max(1, CHUNK_ELEMENTS // (S * n * G))
    weights = []
    for start in range(0, num_particles, chunk):
        with ArtifactAbduction(fixed), pyro.plate("particles", min(chunk, num_particles - start),
                                                  dim=-2):
            guide_trace = poutine.trace(guide).get_trace(**tiled)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**tiled)
        w = sum(_site_log_prob(model_trace, name) for name in EVIDENCE_SITES
                if name in model_trace.nodes)
        weights.append((w - _site_log_prob(guide_trace, "basal")).reshape(-1, S * n))
    log_evidence = torch.cat(weights).logsumexp(0) - math.log(num_particles)
    return log_evidence.reshape(S, n).T


def _site_log_prob(trace, name) -> torch.Tensor:
    site = trace.nodes[name]
    return site["fn"].log_prob(site["value"])


def full_log_posterior(model, guide, kwargs, num_particles: int = NUM_PARTICLES) -> torch.Tensor:
    """log p(artifact = s | counts, QC), (cells, 2^K), normalised over the states:
    the prior of each joint state plus :func:`state_log_evidence`."""
    states = binary_states(model.n_artifacts, kwargs["counts"].device, kwargs["counts"].dtype)
    log_prior = bernoulli_pmf(model.artifact_freq).log_prob(states).sum(-1)
    logits = log_prior + state_log_evidence(model, guide, kwargs, num_particles)
    return logits - logits.logsumexp(-1, keepdim=True)


def log_posterior(model, guide, kwargs, abduct_from: str = DEFAULT_ABDUCT_FROM,
                  num_particles: int = NUM_PARTICLES) -> torch.Tensor:
    """The artifact state's log posterior over the 2^K states from ``abduct_from``'s evidence."""
    check_abduct_from(abduct_from)
    if abduct_from == "qc":
        return qc_log_posterior(model, guide, kwargs)
    return full_log_posterior(model, guide, kwargs, num_particles)


def check_abduct_from(abduct_from: str) -> None:
    if abduct_from not in ABDUCT_FROM:
        raise CradleInputError(f"abduct_from={abduct_from!r}; use 'counts+qc' (the counts and the "
                               "QC evidence) or 'qc' (the QC evidence alone)")


def posterior_columns(logits: torch.Tensor, causes, prefix: str) -> dict:
    """``<prefix>p_<cause>`` (marginals) and ``<prefix>p_any`` of a log posterior over 2^K states."""
    q = BinaryStates(logits)
    p = q.marginals().cpu().numpy()
    out = {f"{prefix}p_{cause}": p[:, k] for k, cause in enumerate(causes)}
    out[f"{prefix}p_any"] = 1 - q.logits[..., 0].exp().cpu().numpy()  # state 0: no cause
    return out


@keeps_global_rng
def artifact_posterior(model, guide, data, split: str | None = None, batch_size: int = 512,
                       abduct_from: str = DEFAULT_ABDUCT_FROM, num_particles: int = NUM_PARTICLES,
                       seed: int = 0, side_by_side: bool = True) -> pd.DataFrame:
    """P(artifact cause = 1 | cell) per cell and cause, beside the QC flags.

    Parameters
    ----------
    model, guide
        A trained model with ``artifact_state="latent"`` and its guide.
    data
        :class:`~cradle_pyro.data.PerturbationData`; ``split`` picks cells
        (all by default).
    abduct_from
        ``"qc"`` (default): from the QC flags and covariates alone (the cut
        used in training); ``"counts+qc"``: from the counts and the QC
        evidence together. See the module docstring.
    num_particles
        Importance draws per state for the counts' evidence.
    seed
        Of those draws (the global random state is left as it was).
    side_by_side
        Also give both posteriors under their own names (default).

    Returns
    -------
    DataFrame
        Indexed by cell: ``p_<cause>`` (posterior probability of each latent
        cause; the QC evidence's at one guide draw of the flags' sensitivity
        and specificity and of the globals), ``p_any`` (of at least one), from ``abduct_from``'s
        evidence (what counterfactual abduction draws from); with
        ``side_by_side`` also ``qc_p_<cause>``, ``qc_p_any`` (QC evidence
        alone) and ``counts_qc_p_<cause>``, ``counts_qc_p_any`` (counts and QC
        together); ``flag_<criterion>`` (each QC flag, 0/1).
    """
    check_abduct_from(abduct_from)
    causes = model.config.artifact_causes
    _artifact_guide(model, guide)
    pyro.set_rng_seed(seed)
    parts, index = [], []
    with torch.no_grad():
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=model.device):
            kwargs = batch.model_kwargs()
            logits = {}
            if abduct_from == "qc" or side_by_side:
                logits["qc"] = qc_log_posterior(model, guide, kwargs)
            if abduct_from == "counts+qc" or side_by_side:
                logits["counts+qc"] = full_log_posterior(model, guide, kwargs, num_particles)
            cols = posterior_columns(logits[abduct_from], causes, "")
            if side_by_side:
                for source, prefix in SIDE_BY_SIDE.items():
                    cols.update(posterior_columns(logits[source], causes, prefix))
            parts.append(cols)
            index.append(batch.cell_index.cpu().numpy())
    idx = np.concatenate(index)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
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
    (P(any cause) < 0.5) and cells unflagged but abducted as artifacts; with both
    posteriors side by side, also the cells the counts cleared (an artifact by the
    QC evidence alone, clean with the counts) and convicted."""
    flags = post.filter(like="flag_").max(1).to_numpy() > 0
    artifact = post["p_any"].to_numpy() >= 0.5
    out = {"n_cells": int(len(post)), "flagged": int(flags.sum()),
           "abducted_artifact": int(artifact.sum()),
           "flagged_but_clean": int((flags & ~artifact).sum()),
           "unflagged_but_artifact": int((~flags & artifact).sum())}
    if "qc_p_any" in post and "counts_qc_p_any" in post:
        by_qc = post["qc_p_any"].to_numpy() >= 0.5
        with_counts = post["counts_qc_p_any"].to_numpy() >= 0.5
        out.update(abducted_artifact_from_qc=int(by_qc.sum()),
                   abducted_artifact_with_counts=int(with_counts.sum()),
                   cleared_by_counts=int((by_qc & ~with_counts).sum()),
                   convicted_by_counts=int((~by_qc & with_counts).sum()))
    for col in post.columns:
        if col.startswith("p_") and col != "p_any":
            out[f"mean_{col}"] = float(post[col].mean())
    return out


def describe_artifact_summary(summary: dict) -> str:
    """One sentence of :func:`artifact_summary` for a terminal or a report."""
    text = (f"{summary['n_cells']} cells; {summary['flagged']} QC-flagged, "
            f"{summary['abducted_artifact']} abducted as artifacts (P >= 0.5); "
            f"{summary['flagged_but_clean']} flagged but abducted clean, "
            f"{summary['unflagged_but_artifact']} unflagged but abducted as artifacts")
    if "cleared_by_counts" in summary:
        text += (f"; from the QC evidence alone {summary['abducted_artifact_from_qc']} are "
                 f"artifacts, from the counts and QC together "
                 f"{summary['abducted_artifact_with_counts']}: the counts cleared "
                 f"{summary['cleared_by_counts']} and convicted {summary['convicted_by_counts']}")
    return text


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
    both = "qc_p_any" in post and "counts_qc_p_any" in post
    panels = len(pairs) + 1 + both
    fig = Figure(figsize=(4.2 * panels, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
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
    if both:  # the same cells judged on the QC evidence alone and with their counts
        ax = axes[-2]
        ax.scatter(post["qc_p_any"], post["counts_qc_p_any"], s=4,
                   c=np.where(flags, "red", "grey"))
        ax.plot([0, 1], [0, 1], lw=0.5, color="black")
        ax.set_xlabel("P(any cause | QC evidence alone)")
        ax.set_ylabel("P(any cause | counts and QC)")
        ax.set_title("below the diagonal: cleared by the counts", fontsize=8)
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
