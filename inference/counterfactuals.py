"""Counterfactuals, cell by cell: abduction → action → prediction.

For observed cells, :func:`counterfactual`

1. **abduction**: draws the cell's exogenous state (``basal``) and the globals
   from the guide, given everything observed about the cell (its counts,
   dosage and artifact state);
2. **action**: intervenes with ``do`` (remove the artifact, switch the
   perturbation, or both);
3. **prediction**: runs the intervened model forward with that same basal
   state, library size and globals, and reports expected and sampled counts
   (where the library mediates the dosage, ``library_effects``, the cell's
   library takes the intervention's shift and keeps its own noise).

This differs from a plain intervention (:func:`cradle_pyro.inference.effects.sample_cells`),
which draws *new* cells with basal states from the prior: a counterfactual
answers "what would **this** cell have looked like", keeping everything the
intervention does not touch. The factual prediction (no intervention, same
abducted state) is returned beside it so differences isolate the intervention.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(300, 60, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> cf = counterfactual(run.model, run.guide, data, artifact="clean")
>>> cf.shape == (data.n_cells, data.n_genes), sorted(cf.layers)[:2]
(True, ['expected', 'factual'])
"""

from __future__ import annotations

import contextlib

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import scipy.sparse as sp
import torch
from pyro import poutine

from cradle_pyro.distributions import BinaryStates
from cradle_pyro.errors import CradleInputError

from .artifacts import (DEFAULT_ABDUCT_FROM, NUM_PARTICLES, ArtifactAbduction, check_abduct_from,
                        log_posterior, posterior_columns)
from .effects import _names
from .interventions import artifact_value, counterfactual_library, intervene
from .seeding import keeps_global_rng


def _predict(model_fn, guide_trace, kwargs):
    """Replay the abducted latents through ``model_fn``; counts are predicted, not observed.

    Returns the expected counts (the mean of the trace's count distribution)
    and a sample of counts.
    """
    kw = dict(kwargs, counts=None, cell_index=None, num_cells=None, reference=None)
    trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(**kw)
    site = trace.nodes["counts"]
    return site["fn"], site["value"]


def _count_law(fn):
    """(gate or None, scipy's frozen count distribution) of a (possibly Independent-wrapped)
    Poisson, NB or ZINB: the one place torch's parameters become scipy's (float64)."""
    from scipy import stats

    base = fn.base_dist if hasattr(fn, "base_dist") else fn
    numpy = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    gate = None
    if isinstance(base, dist.ZeroInflatedNegativeBinomial):
        gate, base = numpy(torch.sigmoid(base.gate_logits)), base.base_dist
    if isinstance(base, dist.NegativeBinomial):  # scipy's p is the success probability
        return gate, stats.nbinom(numpy(base.total_count), numpy(torch.sigmoid(-base.logits)))
    if isinstance(base, dist.Poisson):
        return gate, stats.poisson(numpy(base.rate))
    raise TypeError(f"no count-noise coupling for {type(base).__name__}")


def quantile_counts(fn, u: torch.Tensor) -> torch.Tensor:
    """Counts ``F⁻¹(u)`` of a (possibly Independent-wrapped) count distribution.

    Twin worlds share their count noise through ``u`` (quantile coupling): where
    the intervention leaves a gene's distribution unchanged the factual and
    counterfactual counts are identical, and elsewhere they move monotonically.
    Poisson, negative binomial and zero-inflated negative binomial.
    """
    gate, law = _count_law(fn)
    q = u.detach().cpu().double().numpy()
    if gate is None:
        out = law.ppf(q)
    else:  # zero with probability gate, else NB: rescale u above the gate
        inner = np.clip((q - gate) / np.maximum(1 - gate, 1e-12), 0, 1 - 1e-12)
        out = np.where(q < gate, 0.0, law.ppf(inner))
    return torch.as_tensor(np.nan_to_num(out), dtype=torch.float32, device=u.device)


def _cdf(fn, k: np.ndarray) -> np.ndarray:
    """P(X <= k) of a (possibly Independent-wrapped) count distribution, float64 (k may be -1)."""
    gate, law = _count_law(fn)
    inner = law.cdf(k)
    return inner if gate is None else np.where(k < 0, 0.0, gate + (1 - gate) * inner)


def abducted_counts(fn_factual, fn_counterfactual, observed: torch.Tensor) -> torch.Tensor:
    """Counterfactual counts that share the observed cell's own count noise.

    Abduction: for each observed count ``x`` the noise ``u`` is drawn uniformly in
    ``(F(x-1), F(x)]`` under the factual distribution ``F`` (for ZINB the gate's
    posterior is in that interval: a zero's ``u`` falls below the gate with the
    posterior probability of a structural zero). Prediction: ``G⁻¹(u)`` under the
    counterfactual distribution ``G``. So the factual world reproduces ``x``
    exactly, and a gene whose distribution the intervention leaves alone keeps its
    observed count (where ``(F(x-1), F(x)]`` lies inside ``(G(x-1), G(x)]`` the
    answer is ``x`` without rounding error).
    """
    x = observed.detach().cpu().double().numpy()
    lo, hi = _cdf(fn_factual, x - 1), _cdf(fn_factual, x)
    v = torch.rand(observed.shape, device=observed.device).cpu().double().numpy()
    u = lo + np.clip(v, 1e-9, 1.0) * (hi - lo)
    u_t = torch.as_tensor(u, dtype=torch.float64, device=observed.device)
    out = quantile_counts(fn_counterfactual, u_t).cpu().double().numpy()
    same = (_cdf(fn_counterfactual, x - 1) <= lo) & (hi <= _cdf(fn_counterfactual, x))
    return torch.as_tensor(np.where(same, x, out), dtype=torch.float32, device=observed.device)


NOISE = ("abducted", "shared", "independent")


@keeps_global_rng
def counterfactual(model, guide, data, *, artifact=None, dosage=None, split=None,
                   num_samples: int = 1, batch_size: int = 512, seed: int = 0,
                   device=None, interval: float = 0.9, noise: str = "abducted",
                   abduct_from: str = DEFAULT_ABDUCT_FROM,
                   num_particles: int = NUM_PARTICLES) -> ad.AnnData:
    """Counterfactual predictions for the cells of ``data`` (a split or all).

    Parameters
    ----------
    artifact, dosage
        The intervention (see :func:`cradle_pyro.inference.interventions.intervene`);
        e.g. ``artifact="clean"`` or ``dosage="B"``.
    num_samples
        Posterior draws (of the globals and the cell's basal state) averaged
        into the expected counts; with two or more, credible intervals too.
    interval
        Mass of the central credible intervals.
    noise
        ``"abducted"`` (default): the count noise is abducted from the observed
        counts (:func:`abducted_counts`): the factual layer *is* the observed
        cell, and the counterfactual counts share its noise, so ``do`` of
        nothing returns the observed counts and a gene the intervention does
        not touch keeps its count; ``"shared"``: a fresh uniform per (cell,
        gene) drives both worlds (:func:`quantile_counts`; the factual layer is
        then a re-simulation, not the cell); ``"independent"``: two independent
        draws.
    abduct_from, num_particles
        With a latent artifact state: abduct it from the QC evidence alone
        (``"qc"``, default) or from the counts and QC together (``"counts+qc"``;
        :mod:`cradle_pyro.inference.artifacts`); the basal state is then drawn
        given the abducted artifact state.

    Returns
    -------
    AnnData
        Aligned with the input cells: ``X`` sampled counterfactual counts,
        ``layers["expected"]`` expected counterfactual counts,
        ``layers["factual"]`` and ``layers["factual_expected"]`` the same
        without intervention; obs carries the observed condition and artifact
        state (QC flags) and the intervention, and, for a latent artifact state,
        the posterior probability of each cause (``artifact_p_<cause>``) from
        which abduction drew it. With ``num_samples >= 2`` also
        ``layers["expected_lower"]`` / ``["expected_upper"]`` (interval of the
        expected counterfactual counts) and ``layers["effect_lower"]`` /
        ``["effect_upper"]`` (interval of the individual effect, expected
        counterfactual minus expected factual counts, under the same draw).
    """
    if noise not in NOISE:
        raise ValueError(f"noise={noise!r}; use one of {NOISE}")
    latent = model.config.latent_artifacts
    if latent:
        check_abduct_from(abduct_from)
    device = device or model.device
    names = _names(data)
    model_do = intervene(model, dosage=dosage, artifact=artifact, **names)
    pyro.set_rng_seed(seed)
    keys = ["cf", "cf_mean", "fa", "fa_mean"]
    if num_samples >= 2:
        keys += ["cf_lower", "cf_upper", "effect_lower", "effect_upper"]
    q = torch.tensor([(1 - interval) / 2, (1 + interval) / 2])
    out = {k: [] for k in keys}
    idx_all, posterior = [], []
    with torch.no_grad():
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=device):
            kwargs = batch.model_kwargs()
            abduction = contextlib.nullcontext()  # an observed artifact state: nothing to abduct
            if latent:  # the artifact state from its posterior, then basal given it
                logits = log_posterior(model, guide, kwargs, abduct_from, num_particles)
                posterior.append(posterior_columns(logits, model.config.artifact_causes, "artifact_"))
                abduction = ArtifactAbduction(BinaryStates(logits))
            draws_cf, draws_fa, acc = [], [], {}
            for s in range(num_samples):
                with abduction:
                    gtr = poutine.trace(guide).get_trace(**dict(kwargs, reference=None))
                # a library that mediates the dosage moves with it; the cell keeps its own noise
                kw_cf = dict(kwargs, library=counterfactual_library(
                    model, gtr, kwargs["library"], kwargs["dosage"], dosage, names))
                fn_cf, x_cf = _predict(model_do, gtr, kw_cf)
                fn_fa, x_fa = _predict(model, gtr, kwargs)
                mean_cf, mean_fa = fn_cf.mean, fn_fa.mean
                if s == 0 and noise == "abducted":
                    x_fa = kwargs["counts"].reshape(mean_fa.shape)
                    x_cf = abducted_counts(fn_fa, fn_cf, x_fa)
                elif s == 0 and noise == "shared":
                    u = torch.rand(mean_fa.shape, device=mean_fa.device)
                    x_cf, x_fa = quantile_counts(fn_cf, u), quantile_counts(fn_fa, u)
                draws_cf.append(mean_cf.reshape(batch.size, -1))
                draws_fa.append(mean_fa.reshape(batch.size, -1))
                if s == 0:
                    acc["cf"], acc["fa"] = x_cf, x_fa
            cf, fa = torch.stack(draws_cf), torch.stack(draws_fa)
            acc["cf_mean"], acc["fa_mean"] = cf.mean(0), fa.mean(0)
            if num_samples >= 2:
                acc["cf_lower"], acc["cf_upper"] = torch.quantile(cf, q.to(cf), dim=0)
                acc["effect_lower"], acc["effect_upper"] = torch.quantile(cf - fa, q.to(cf), dim=0)
            for k in out:
                out[k].append(acc[k].reshape(batch.size, -1).cpu().numpy())
            idx_all.append(batch.cell_index.cpu().numpy())
    idx = np.concatenate(idx_all)
    obs = pd.DataFrame({
        "perturbation": np.asarray(data.conditions)[idx],
        "observed_artifact": data.artifact[idx].max(1) if data.n_artifacts else 0.0,
        "split": data.split[idx],
        "do_artifact": "" if artifact is None else str(artifact),
        "do_dosage": "" if dosage is None else str(dosage),
    }, index=[data.obs_names[i] for i in idx])
    if latent:  # abduction drew the artifact state from this posterior
        for col in posterior[0]:
            obs[col] = np.concatenate([p[col] for p in posterior])
    stack = {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}
    layers = {"expected": stack["cf_mean"], "factual": sp.csr_matrix(stack["fa"]),
              "factual_expected": stack["fa_mean"]}
    if num_samples >= 2:
        layers.update(expected_lower=stack["cf_lower"], expected_upper=stack["cf_upper"],
                      effect_lower=stack["effect_lower"], effect_upper=stack["effect_upper"])
    return ad.AnnData(X=sp.csr_matrix(stack["cf"]), obs=obs,
                      var=pd.DataFrame(index=data.gene_names), layers=layers,
                      uns={"interval": interval, "num_samples": num_samples,
                           **({"abduct_from": abduct_from} if latent else {})})


@keeps_global_rng
def artifact_log_likelihood_ratio(model, guide, data, split=None, batch_size=512,
                                  num_samples: int = 4, seed: int = 0) -> np.ndarray:
    """Per cell: log p(x | artifact=1) − log p(x | artifact=0), each with the basal
    state abducted under that artifact state. Positive: the artifact explains
    the cell better. A model-based artifact score, comparable with QC labels."""
    device = model.device
    pyro.set_rng_seed(seed)
    scores = []
    with torch.no_grad():
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=device):
            kwargs = dict(batch.model_kwargs(), num_cells=None, cell_index=None, reference=None)
            lp = []
            for state in ("artifact", "clean"):
                a = artifact_value(state, data.n_artifacts, data.artifact_names).to(device)
                kw = dict(kwargs, artifact=a.expand(batch.size, -1))
                total = 0.0
                for _ in range(num_samples):
                    gtr = poutine.trace(guide).get_trace(**kw)
                    mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(**kw)
                    site = mtr.nodes["counts"]
                    total = total + site["fn"].log_prob(site["value"]) / num_samples
                lp.append(total)
            scores.append((lp[0] - lp[1]).cpu().numpy())
    return np.concatenate(scores)


def normalised_log_expression(x) -> np.ndarray:
    """log1p(1e4·x/Σx), the space counterfactual distances are measured in."""
    x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=float)
    return np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1e-8))


def twin_layer(twins: ad.AnnData) -> str:
    """The layer holding a simulated screen's clean twins: ``"clean_expected"`` (noise-free)
    where it exists, else ``"clean"`` (one noisy draw); refused in one line without either."""
    for layer in ("clean_expected", "clean"):
        if layer in twins.layers:
            return layer
    raise CradleInputError("the twins have no layers['clean_expected'] or ['clean'] (the cells' "
                           "clean twins): pass a screen from simulate_screen (keep_expected=True "
                           "for the noise-free twins)")


def cleaning_against_twins(cf: ad.AnnData, twins: ad.AnnData, layer: str | None = None,
                           kind_column: str = "artifact_kind") -> pd.DataFrame:
    """How far ``do(artifact = clean)`` brought each group of cells to its clean twin.

    For a simulated screen, whose cells keep their twin without the artifact
    (:func:`cradle_pyro.simulate.simulate_screen`: ``layers["clean_expected"]``,
    the twin's expected counts, or ``layers["clean"]``, one noisy draw), per
    group: the mean squared distance, in log1p(CP10k), of the counterfactual
    expectation to the twin (``cf_mse``) and of the factual expectation
    (``factual_mse``), and ``ratio = cf_mse / factual_mse``: below 1 cleaning
    helped, 1 it left the cells alone, above 1 it pushed them away.

    Groups: each injected kind (all its cells, those QC flagged, those QC
    missed), clean cells QC flagged (``clean_flagged_by_qc``) and clean cells
    not flagged (``clean_unflagged``).

    Parameters
    ----------
    cf
        :func:`counterfactual` with ``artifact="clean"``.
    twins
        The simulated AnnData (same cell names).
    layer
        The twins' layer (default: :func:`twin_layer`).
    """
    layer = layer or twin_layer(twins)
    names = cf.obs_names
    twin = normalised_log_expression(twins[names].layers[layer])
    kind = twins.obs.loc[names, kind_column].astype(str).to_numpy()
    flagged = cf.obs["observed_artifact"].to_numpy() > 0
    cf_mse = ((normalised_log_expression(cf.layers["expected"]) - twin) ** 2).mean(1)
    fa_mse = ((normalised_log_expression(cf.layers["factual_expected"]) - twin) ** 2).mean(1)
    groups = {}
    for k in [k for k in pd.unique(kind) if k != "none"]:
        groups.update({k: kind == k, f"{k}_flagged": (kind == k) & flagged,
                       f"{k}_missed": (kind == k) & ~flagged})
    groups.update(clean_flagged_by_qc=(kind == "none") & flagged,
                  clean_unflagged=(kind == "none") & ~flagged)
    rows = {name: {"n": int(sel.sum()), "cf_mse": float(cf_mse[sel].mean()),
                   "factual_mse": float(fa_mse[sel].mean()),
                   "ratio": float(cf_mse[sel].mean() / fa_mse[sel].mean())}
            for name, sel in groups.items() if sel.sum()}
    return pd.DataFrame.from_dict(rows, orient="index")
