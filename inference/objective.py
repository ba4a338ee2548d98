"""The training objective: minibatch ELBO with plate reweighting, plus alignment.

``CradleELBO(model, guide, **batch)`` returns the loss to minimise::

    loss = -ELBO_minibatch + beta_eff * sum_n (N/B) KL_align(n)
           + independence * leakage

``alignment_weighting`` says how ``beta`` is read:

- ``"per-cell"`` (default): ``beta_eff = beta``; each cell's alignment KL
  weighs ``beta`` against that cell's ELBO term.
- ``"published"``: the published CRADLE loss ``−mean_n ELBO_n + β Σ_n KL_n``
  (a batch of B cells). Multiplied by N it is ``−ELBO_minibatch + β·B ·
  Σ_n (N/B) KL_n``: the same as ``beta_eff = β·B``, so with the published
  β = 0.5 and B = 512 each cell's KL weighs about 256 times its ELBO term.

- Local sites are scaled by N/B by the model's cell plate.
- Per-perturbation global sites (``effect``, ``mask``) are charged to the cells
  that received the perturbation (SAMS-VAE's plate reweighting): the term of
  perturbation p gets weight ``(N/B) * c_p / n_p`` where ``c_p`` counts the
  batch's cells with p and ``n_p`` the data set's. Likewise ``artifact_effect``
  with artifact counts. Summed over the batches of an epoch each global term
  gets weight 1, so the estimate of the full-data ELBO is unbiased. The weights
  are applied by :class:`SiteScale`, a tensor ``poutine.scale`` restricted to
  named sites, around both model and guide: any guide (autoguides included)
  gets the same weights.
- Optional likelihood class balancing by artifact state (``class_balance=α``):
  artifact cells carry share α of the likelihood weight. Off by default.
- Particles are vectorised with a ``pyro.plate`` at dim -2.
- Guide sites without ``rsample`` (a discrete q of the user's) get their
  score-function terms (:func:`score_function_surrogate`), so the gradient is
  the ELBO's, not a biased one; checked against exact enumeration in
  ``tests/test_score_function.py``.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.model import CradleModel
>>> from cradle_pyro.guides import CorrelatedGuide
>>> data = PerturbationData.from_anndata(simulate_screen(300, 60, seed=0), doublets=False)
>>> model = CradleModel.from_data(data)
>>> guide = CorrelatedGuide(model, data.gene_mean, data.gene_std)
>>> objective = CradleELBO(num_particles=2, beta=1.0).for_data(data, "train")
>>> batch = next(data.batches("train", batch_size=64, seed=0))
>>> loss = objective(model, guide, **batch.model_kwargs())
>>> bool(loss.isfinite()), sorted(objective.last_terms)[:2]
(True, ['alignment', 'elbo'])
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro.poutine.messenger import Messenger

from cradle_pyro.guides import basal_posterior_of

from .group_means import RunningGroupMeans

PARTICLE_DIM = -2
ALIGNMENT_WEIGHTINGS = ("per-cell", "published")
PERTURBATION_SITES = ("effect", "mask")
ARTIFACT_SITES = ("artifact_effect",)


class SiteScale(Messenger):
    """Multiply the log-density of named sample sites by (tensor) weights.

    Example
    -------
    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro import poutine
    >>> def f():
    ...     with pyro.plate("p", 2):
    ...         pyro.sample("effect", dist.Normal(0., 1.))
    >>> with SiteScale({"effect": torch.tensor([0.5, 2.0])}):
    ...     tr = poutine.trace(f).get_trace()
    >>> tr.nodes["effect"]["scale"].tolist()
    [0.5, 2.0]
    """

    def __init__(self, scales: dict):
        super().__init__()
        self.scales = scales

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.scales:
            msg["scale"] = self.scales[msg["name"]] * msg["scale"]


def _per_particle(log_prob, num_particles):
    """Sum a site's log-density over everything but the particle dimension (dim -2)."""
    if log_prob.dim() < 2:
        return log_prob.sum().expand(num_particles)
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1).expand(num_particles)


class CradleELBO:
    """Minibatch ELBO with plate reweighting and CRADLE's counterfactual alignment.

    Parameters
    ----------
    num_particles
        Vectorised samples of the guide per step.
    beta
        Weight of the alignment term (0 switches it off).
    class_balance
        α: share of the likelihood weight carried by artifact cells; ``None``
        (default) leaves the likelihood unweighted; ``"published"``: the
        published code's per-batch, unnormalised weights (clean cells × the
        batch's artifact share s, artifact cells × (1 − s)).
    independence
        Weight of the basal-leakage penalty (:meth:`basal_leakage`); 0 (this
        class's default: the plain objective) is off. ``TrainConfig`` trains
        with 3, chosen on simulated screens.
    alignment_weighting
        ``"per-cell"`` or ``"published"`` (see the module docstring).
    """

    def __init__(self, num_particles: int = 5, beta: float = 1.0, class_balance: float | None = None,
                 independence: float = 0.0, alignment_weighting: str = "per-cell"):
        if alignment_weighting not in ALIGNMENT_WEIGHTINGS:
            raise ValueError(f"alignment_weighting={alignment_weighting!r}; "
                             f"choose one of {list(ALIGNMENT_WEIGHTINGS)}")
        self.num_particles = num_particles
        self.alignment_weighting = alignment_weighting
        self.beta = beta
        self.class_balance = class_balance
        self.independence = independence
        self.perturbation_counts = None
        self.artifact_counts = None
        self.artifact_share = None
        self.group_means = RunningGroupMeans()  # for basal_leakage
        self.last_terms: dict = {}
        self._checked: set = set()  # guides whose sites were checked against the model

    def for_data(self, data, split: str = "train") -> "CradleELBO":
        """Take n_p, n_a and the artifact share from a split of ``data``."""
        self.perturbation_counts = torch.as_tensor(data.perturbation_cell_counts(split))
        self.artifact_counts = torch.as_tensor(data.artifact_cell_counts(split))
        idx = data.indices(split)
        self.artifact_share = float(data.artifact[idx].max(1).mean()) if data.n_artifacts else 0.0
        self.group_means.reset()
        return self

    def state_dict(self) -> dict:
        """What the objective remembers between batches (the leakage penalty's group means)."""
        return {"group_means": self.group_means.state_dict()}

    def load_state_dict(self, state: dict):
        self.group_means.load_state_dict(state["group_means"])

    # ------------------------------------------------------------ weights
    def site_scales(self, dosage, artifact, num_cells) -> dict:
        """Per-site weights of one batch (see module docstring)."""
        batch = dosage.shape[-2]
        factor = (num_cells or batch) / batch
        scales = {}
        if self.perturbation_counts is not None:
            n_p = self.perturbation_counts.to(dosage)
            w = factor * dosage.sum(-2) / n_p.clamp(min=1)
            for site in PERTURBATION_SITES:
                scales[site] = w
        if self.artifact_counts is not None and artifact is not None and artifact.shape[-1]:
            n_a = self.artifact_counts.to(artifact)
            scales["artifact_effect"] = factor * artifact.sum(-2) / n_a.clamp(min=1)
        if self.class_balance == "published" and artifact is not None:
            # the published loss: alpha·(1−qc)·log p_clean + (1−alpha)·qc·log p_artifact with
            # alpha the batch's artifact share, not normalised
            is_art = (artifact.sum(-1) > 0).to(artifact.dtype)
            batch_share = is_art.mean(-1, keepdim=True)
            scales["counts"] = is_art * (1 - batch_share) + (1 - is_art) * batch_share
        elif self.class_balance is not None and artifact is not None and self.artifact_share:
            alpha, share = self.class_balance, self.artifact_share
            is_art = (artifact.sum(-1) > 0).to(artifact.dtype)
            scales["counts"] = is_art * alpha / share + (1 - is_art) * (1 - alpha) / (1 - share)
        return scales

    # -------------------------------------------------------------- traces
    def traces(self, model, guide, **kwargs):
        """Vectorised guide and model traces with log-densities computed."""
        scales = self.site_scales(kwargs["dosage"], kwargs.get("artifact"), kwargs.get("num_cells"))
        if _latent_artifacts(model):
            # the flags are not the artifact state: its effect is a plain global (weight 1)
            scales.pop("artifact_effect", None)
        particles = pyro.plate("particles", self.num_particles, dim=PARTICLE_DIM)
        with SiteScale(scales), particles:
            guide_trace = poutine.trace(guide).get_trace(**kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**kwargs)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        return model_trace, guide_trace

    def __call__(self, model, guide, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self.traces(model, guide, **kwargs)
        if id(guide) not in self._checked:
            check_model_guide_agreement(model_trace, guide_trace)
            self._checked.add(id(guide))
        S = self.num_particles
        loglik = torch.zeros(S, device=kwargs["counts"].device)
        log_p = torch.zeros_like(loglik)
        log_q = torch.zeros_like(loglik)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = _per_particle(site["log_prob"], S)
            if site["is_observed"] and name == "counts":
                loglik = loglik + lp
            log_p = log_p + lp
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                log_q = log_q + _per_particle(site["log_prob"], S)
        elbo = (log_p - log_q).mean()
        # zero in value; its gradient is the score-function part of the ELBO's gradient
        surrogate = score_function_surrogate(model_trace, guide_trace, log_p - log_q)
        alignment = self.alignment(model, guide, guide_trace, kwargs)
        leakage = self.basal_leakage(guide_trace, kwargs)
        beta = self.beta * (kwargs["counts"].shape[-2] if self.alignment_weighting == "published" else 1)
        loss = -(elbo + surrogate) + beta * alignment + self.independence * leakage
        self.last_terms = {
            "loss": float(loss.detach()), "elbo": float(elbo.detach()),
            "loglik": float(loglik.mean().detach()), "kl": float((loglik - log_p + log_q).mean().detach()),
            "alignment": float(alignment.detach()), "leakage": float(leakage.detach()),
        }
        return loss

    def basal_leakage(self, guide_trace, kwargs):
        """The full-data penalty Σ_g N_g · ½‖m_g‖², m_g the mean of q(basal) locations in group g.

        Groups are treatment states: cells with the same dosage and artifact
        state. The basal state is exogenous: its aggregate posterior within
        any treatment group should be the N(0, I) prior, so a group mean away
        from 0 is part of the treatment left in the basal state (where
        generation from the prior drops it). This is the first moment of that
        constraint.

        The group means come from :class:`~cradle_pyro.inference.group_means.RunningGroupMeans`
        (recent batches, detached), not from the batch alone: a batch holds
        one or two cells of many groups, and a batch mean would pull each such
        cell's own location towards 0. The returned surrogate
        ``(N/B) Σ_n m̂_g(n) · (loc_n − ½ m̂_g(n))`` has the full-data penalty's
        gradient (m_g for each cell of g) and, summed over an epoch's
        batches, its value.
        """
        site = guide_trace.nodes.get("basal")
        if self.independence == 0 or site is None:
            return torch.zeros((), device=kwargs["counts"].device)
        loc = _location(site["fn"])
        batch = kwargs["counts"].shape[-2]
        loc = loc.reshape(-1, batch, loc.shape[-1])  # (particles or 1, B, d)
        treatment = torch.cat([kwargs["dosage"]] + ([kwargs["artifact"]] if kwargs.get("artifact")
                                                    is not None else []), -1)
        group_mean = self.group_means.update(treatment, loc.mean(0))
        per_particle = (group_mean * (loc - 0.5 * group_mean)).sum((-2, -1))
        factor = (kwargs.get("num_cells") or batch) / batch
        return factor * per_particle.mean()

    def alignment(self, model, guide, guide_trace, kwargs):
        """Σ_n (N/B) KL_align(n), averaged over particles (0 without references).

        KL( q(basal | x_ref(n), dosage_n, 1 − a_n) ‖ q(basal | x_n, dosage_n, 1 − a_n) ),
        exact Gaussian KL, with the globals the guide drew in ``guide_trace``.
        Computed here from the guide's basal-posterior protocol
        (:mod:`cradle_pyro.guides`): reference profiles are encoded once per
        group in the batch, and the cell's counterfactual encoding shares its
        factual x-features (memoised by the guide).
        """
        reference = kwargs.get("reference")
        zero = torch.zeros((), device=kwargs["counts"].device)
        if self.beta == 0 or reference is None or reference.profiles.shape[0] == 0:
            return zero
        if getattr(model, "artifact_offset_dim", 1) == 0:
            return zero  # no artifact path (sams, cpa, svae+): nothing to align
        if _latent_artifacts(model):
            # reference groups are cut by the QC flags; with a latent artifact state
            # the flags are evidence, not the state, so there is nothing to align to
            return zero
        posterior = basal_posterior_of(guide)
        if posterior is None:
            raise ValueError(
                "the alignment term (beta > 0) needs a guide exposing its basal posterior "
                "(basal_features, basal_distribution; see cradle_pyro.guides); "
                f"{type(guide).__name__} has none: add BasalGuide to it or set beta=0")
        globals_ = [guide_trace.nodes[k]["value"] if k in guide_trace.nodes else None
                    for k in ("effect", "mask", "artifact_effect")]
        counts, library = kwargs["counts"], kwargs.get("library")
        library = counts.sum(-1) if library is None else library
        hx = posterior.basal_features(counts, library)
        ref_library = reference.profiles.sum(-1)
        h_ref = posterior.basal_features(reference.profiles, ref_library)
        q_ref = posterior.basal_distribution(h_ref, reference.dosage, reference.artifact, *globals_)
        group = reference.cell_group
        has_ref = group >= 0
        idx = group.clamp(min=0)
        q_cf = posterior.basal_distribution(hx, kwargs["dosage"], reference.artifact[idx], *globals_)
        ref = dist.Normal(q_ref.loc.index_select(-2, idx), q_ref.scale.index_select(-2, idx))
        kl = kl_divergence(ref, q_cf).sum(-1) * has_ref.to(q_cf.loc.dtype)
        batch = counts.shape[-2]
        factor = (kwargs.get("num_cells") or batch) / batch
        return factor * kl.sum(-1).mean()

CUT = "cut"  # infer key: a guide site whose parameters the rest of the model must not inform


def score_function_surrogate(model_trace, guide_trace, log_weight) -> torch.Tensor:
    """Zero in value; its gradient adds the score-function terms of non-reparameterised sites.

    ``(log p − log q).mean()`` differentiates through every guide site that has
    ``rsample``; at a site without one (a discrete q, a guide of the user's) the
    gradient of its parameters through the sampled value is missing, and the
    estimate is biased. For each such site this adds
    ``Σ log q(site) · stop_gradient(cost − baseline)`` minus its own value, where the cost is what
    depends on the site's value (Rao-Blackwellised by Pyro's own plate logic, as
    ``TraceGraph_ELBO`` does): for a site in the ``cells`` plate, the log p − log q
    of that cell's local sites; for any other site, the whole particle's log p − log q.
    ``log_weight`` is each particle's log p − log q (the ELBO's per-particle terms).
    The baseline is the mean over the other particles (none with one particle). Sites
    marked ``infer={"cut": True}`` are left out on purpose: modular inference (the
    artifact state's QC-only posterior, :class:`~cradle_pyro.guides.ArtifactGuide`).
    """
    S = len(log_weight)
    sites = [(name, site) for name, site in _latent_sites(guide_trace).items()
             if not getattr(site["fn"], "has_rsample", True) and not site["infer"].get(CUT)]
    if not sites:
        return torch.zeros(())
    local = None  # per particle and cell: the cell's local log p − log q
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and cell_frame(site) is not None:
                lp = site["log_prob"].expand(S, site["log_prob"].shape[-1])
                local = sign * lp if local is None else local + sign * lp
    surrogate = torch.zeros(())
    for name, site in sites:
        if cell_frame(site) is not None and local is not None:
            log_q, cost = site["log_prob"].expand(S, site["log_prob"].shape[-1]), local
        else:
            log_q, cost = _per_particle(site["log_prob"], S), log_weight
        cost = cost.detach()
        baseline = (cost.sum(0, keepdim=True) - cost) / (S - 1) if S > 1 else 0.0
        term = (log_q * (cost - baseline)).sum() / S
        surrogate = surrogate + term - term.detach()
    return surrogate


def cell_frame(site):
    """The ``cells`` plate frame a site sits in, or ``None``."""
    return next((frame for frame in site["cond_indep_stack"] if frame.name == "cells"), None)


def _latent_artifacts(model) -> bool:
    """Whether ``model`` (any callable) has a latent artifact state."""
    return bool(getattr(getattr(model, "config", None), "latent_artifacts", False))


def _latent_sites(trace) -> dict:
    """Unobserved sample sites of a trace (plates and autoguides' auxiliary sites excluded)."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site["infer"].get("is_auxiliary")
            and type(site["fn"]).__name__ != "_Subsample"}


def check_model_guide_agreement(model_trace, guide_trace):
    """Model and guide sample the same latent sites with compatible supports.

    A latent the guide leaves out is drawn from the prior at every step and
    enters the ELBO without a q term; a guide site the model lacks is scored
    by nothing. Either is refused, naming the sites.
    """
    model_sites, guide_sites = _latent_sites(model_trace), _latent_sites(guide_trace)
    missing = sorted(set(model_sites) - set(guide_sites))
    extra = sorted(set(guide_sites) - set(model_sites))
    if missing:
        raise ValueError(
            f"the guide does not sample the model's latent site(s) {missing}: they would be "
            "drawn from the prior at every step with no q term in the ELBO; add them to the "
            "guide (e.g. AutoNormal(poutine.block(model, expose=[...])) or a mask guide)")
    if extra:
        raise ValueError(f"the guide samples site(s) {extra} that the model does not")
    for name in model_sites:
        p, q = model_sites[name]["fn"], guide_sites[name]["fn"]
        if p.support.is_discrete != q.support.is_discrete or p.event_dim != q.event_dim:
            raise ValueError(
                f"site {name!r}: the model's support is {p.support} (event dim {p.event_dim}) "
                f"but the guide's is {q.support} (event dim {q.event_dim})")


def _location(fn):
    """The location of a guide's (possibly Independent-wrapped) basal distribution."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.loc if hasattr(fn, "loc") else fn.mean


GLOBAL_SITES = ("effect", "mask", "mask_rate", "artifact_effect", "target_effect", "gene_effect",
                "library_effect", "flag_sensitivity", "flag_specificity")
# per-cell sites of p(x_n, z_n | globals); ``artifact`` counts only where it is latent
LOCAL_SITES = ("artifact", "artifact_flag", "qc", "basal", "library", "counts")


def per_cell_log_weights(model, guide, num_particles: int, return_globals: bool = False,
                         **kwargs):
    """log p(x_n, basal_n | globals) − log q(basal_n | x_n, globals) per particle and cell.

    Globals are drawn from the guide, one per particle. Returns (particles, cells).
    Local sites only, without the N/B scaling: the importance weights of
    held-out IWELBO and of the PSIS diagnostic. With ``return_globals=True``
    also the globals' own ``log p(g) − log q(g)`` per particle (same draws),
    for a whole-guide weight.
    """
    kwargs = dict(kwargs, num_cells=None, reference=None)
    with torch.no_grad(), pyro.plate("particles", num_particles, dim=PARTICLE_DIM):
        guide_trace = poutine.trace(guide).get_trace(**kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**kwargs)
    n = kwargs["counts"].shape[-2]
    local = torch.zeros(num_particles, n, device=kwargs["counts"].device)
    for name in LOCAL_SITES:
        latent = name in guide_trace.nodes
        if name in model_trace.nodes and (latent or name != "artifact"):
            site = model_trace.nodes[name]
            local = local + site["fn"].log_prob(site["value"]).expand(num_particles, n)
        if latent:
            site = guide_trace.nodes[name]
            local = local - site["fn"].log_prob(site["value"]).expand(num_particles, n)
    if not return_globals:
        return local
    glob = torch.zeros(num_particles, device=local.device)
    for name in GLOBAL_SITES:
        if name in model_trace.nodes and name in guide_trace.nodes:
            p_site, q_site = model_trace.nodes[name], guide_trace.nodes[name]
            lp = p_site["fn"].log_prob(p_site["value"])
            lq = q_site["fn"].log_prob(q_site["value"])
            glob = glob + _per_particle(lp, num_particles) - _per_particle(lq, num_particles)
    return local, glob


def iwelbo(model, guide, data, split: str = "test", num_particles: int = 50,
           batch_size: int = 256, device="cpu") -> np.ndarray:
    """Held-out importance-weighted ELBO of each cell of ``split`` (nats).

    ``log (1/K) Σ_k p(x_n, z_k | g_k) / q(z_k | x_n, g_k)`` with globals
    ``g_k`` drawn from the guide. Higher is better; ≥ the per-cell ELBO.
    """
    values = []
    for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=device):
        w = per_cell_log_weights(model, guide, num_particles, **batch.model_kwargs())
        values.append((torch.logsumexp(w, 0) - np.log(num_particles)).cpu().numpy())
    return np.concatenate(values)
