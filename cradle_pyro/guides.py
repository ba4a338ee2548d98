"""Variational guides: the paper's correlated guide and a mean-field guide.

Both are plain :class:`~pyro.nn.PyroModule` callables with the model's
signature. They sample the same latent sites as the model
(``effect``, ``mask``, ``mask_rate`` for ``svae+``, ``artifact_effect``,
``target_effect`` where targets are measured genes, ``gene_effect`` and
``library_effect`` when switched on, ``basal``).

The basal-posterior protocol
----------------------------
CRADLE's counterfactual alignment compares q(basal) of a cell with that of a
reference profile, both encoded as if in the opposite artifact state. The
objective (``cradle_pyro.inference.objective.CradleELBO``) computes it from any guide, or
any part of a :class:`CombinedGuide` / ``AutoGuideList``, that exposes its
basal posterior with two methods:

``basal_features(counts, library) -> Tensor``
    the expensive, x-only part of the encoding (memoised for the batch being
    encoded, so factual and counterfactual encodings share it);
``basal_distribution(features, dosage, artifact, effect, mask, artifact_effect)``
    ``-> Normal`` over (…, cells, latent_dim), given the globals.

:func:`basal_posterior_of` finds that part. A guide without it trains with
the alignment weight at 0, and is refused with a clear error otherwise.

- :class:`CorrelatedGuide`: q(mask) straight-through Bernoulli (pmf scored),
  q(effect | mask) from an MLP of ``[mask_p, one-hot(p)]``, q(artifact_effect)
  Normal, q(basal | x, offsets) from an encoder of log-standardised counts and
  the cell's perturbation and artifact offsets.
- :class:`MeanFieldGuide`: independent factors for the globals and
  q(basal | x).
- :class:`BasalGuide`: the amortised q(basal | x) alone, to pair with a Pyro
  autoguide on the globals (``AutoGuideList``).
- :class:`ArtifactGuide`: for a latent artifact state, q(artifact | x, QC
  flags, QC covariates) (straight-through Bernoulli, pmf scored) and Beta
  factors for the flags' sensitivity and specificity. The correlated and
  mean-field guides include it when the model's artifact state is latent, and
  their q(basal) reads the artifact state it drew.

Example
-------
>>> import torch
>>> from pyro import poutine
>>> from cradle_pyro.model import CradleModel
>>> model = CradleModel(n_genes=30, n_perturbations=4, n_artifacts=1)
>>> guide = CorrelatedGuide(model)
>>> x = torch.poisson(torch.full((5, 30), 3.0))
>>> tr = poutine.trace(guide).get_trace(counts=x, dosage=torch.zeros(5, 4),
...                                     artifact=torch.zeros(5, 1), library=x.sum(1))
>>> tuple(tr.nodes["basal"]["value"].shape)
(5, 10)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from .distributions import BernoulliStraightThrough
from .model import CradleModel
from .nets import BasalEncoder, EffectNet, log_standardise


DECODER_SCALE_START = 0.005   # q(decoder_weight)'s initial scale, as a share of the prior's


class _GuideBase(PyroModule):
    """Shared parts: gene standardisation, q(basal | x, offsets) and its protocol methods."""

    def __init__(self, model: CradleModel, gene_mean=None, gene_std=None, use_offsets=True,
                 temperature: float = 0.5):
        super().__init__()
        self.model_ref = [model]  # a list keeps the model out of the guide's parameters
        cfg = model.config
        G = model.n_genes
        self.register_buffer("gene_mean", torch.as_tensor(gene_mean if gene_mean is not None
                                                          else torch.zeros(G), dtype=torch.float32))
        self.register_buffer("gene_std", torch.as_tensor(gene_std if gene_std is not None
                                                         else torch.ones(G), dtype=torch.float32))
        self.use_offsets = use_offsets
        self.temperature = temperature
        self.encoder = BasalEncoder(
            G, cfg.latent_dim, cfg.hidden_dim,
            perturbation_dim=model.perturbation_offset_dim if use_offsets else 0,
            artifact_dim=model.artifact_offset_dim if use_offsets else 0,
            n_layers=cfg.n_layers)

    @property
    def model(self) -> CradleModel:
        return self.model_ref[0]

    def standardise(self, counts, library):
        return log_standardise(counts, library, self.gene_mean, self.gene_std)

    def basal_features(self, counts, library):
        """The x-only first layer of q(basal | x, offsets) (protocol; memoised per batch)."""
        cache = getattr(self, "_features", None)
        if cache is not None and cache[0] is counts and cache[1] is library:
            return cache[2]
        hx = self.encoder.x_part(self.standardise(counts, library))
        self._features = (counts, library, hx)
        return hx

    def basal_distribution(self, hx, dosage, artifact, effect, mask, artifact_effect):
        """q(basal | x, offsets) from the shared x part ``hx``."""
        if not self.use_offsets:
            loc, scale = self.encoder.head(hx)
            return dist.Normal(loc, scale)
        m = self.model
        p_off = m.perturbation_offset(dosage, effect, mask)
        a_off = m.artifact_offset(artifact, artifact_effect) if artifact is not None else None
        loc, scale = self.encoder.head(hx, p_off, a_off)
        if m.config.use_embeddings and m.config.residual_encoder:
            # The encoder reads the cell's whole latent state; its basal state is
            # what is left once the perturbation and artifact shifts are removed.
            # Without this residual form the encoder absorbs the perturbation into
            # the basal state and the effects stay near zero (measured on the
            # simulator: ATE r 0.15 -> 0.81 for sams).
            loc = loc - p_off - (a_off if a_off is not None else 0.0)
        return dist.Normal(loc, scale)

    def basal_estimate(self, counts, dosage, library, globals_):
        """The mean of q(basal | x) with no artifact offset, detached: what the QC part
        reads of the cell's biology (the counts train the encoder, not the QC terms)."""
        q = self.basal_distribution(self.basal_features(counts, library), dosage, None, *globals_)
        return q.loc.detach()

    def sample_basal(self, counts, dosage, artifact, library, globals_):
        """Draw ``basal`` (inside the ``cells`` plate)."""
        q = self.basal_distribution(self.basal_features(counts, library), dosage, artifact, *globals_)
        pyro.sample("basal", q.to_event(1))


def cells_plate(counts, cell_index, num_cells):
    """The guide's ``cells`` plate over the minibatch (same subsample as the model's)."""
    n = counts.shape[-2]
    subsample = cell_index if cell_index is not None else torch.arange(n, device=counts.device)
    return pyro.plate("cells", num_cells or n, subsample=subsample, dim=-1)


class ArtifactGuide(PyroModule):
    """q(flag_sensitivity) q(flag_specificity) q(artifact | flags, qc), for a latent artifact state.

    q(artifact) is the exact posterior of the model's QC part,
    p(artifact | QC flags, QC covariates, sensitivity, specificity, basal), by
    enumeration of the 2^K joint states (:meth:`ArtifactEvidence.posterior`),
    with the model's current covariate parameters and, for the covariates'
    biological part, the guide's estimate of the basal state (the mean of
    q(basal | x) without an artifact offset, detached). It is a *cut* (modular
    inference): the counts do not inform it, so the causes cannot turn into
    clusters of biological states, which they did when an amortised q was
    trained on the whole ELBO (clean cells given artifact probabilities of
    0.25–0.5 on the simulator). With q exact, the ELBO's QC terms equal the
    QC part's marginal likelihood, so its parameters get exact gradients.
    Sensitivities and specificities get Beta factors started at their priors.
    """

    def __init__(self, model: CradleModel):
        super().__init__()
        self.model_ref = [model]  # a list keeps the model out of the guide's parameters
        ev = model.artifact_evidence
        K, A = ev.n_causes, ev.n_flags
        self.n_causes, self.n_flags = K, A
        self.sensitivity_concentration = PyroParam(
            ev.sensitivity_prior.expand(K, A, 2).clone(), constraint=constraints.positive)
        self.specificity_concentration = PyroParam(
            ev.specificity_prior.expand(A, 2).clone(), constraint=constraints.positive)

    def sample_sensitivity(self):
        """q(flag_sensitivity); call inside the ``artifact_kinds`` plate."""
        c = self.sensitivity_concentration
        return pyro.sample("flag_sensitivity", dist.Beta(c[..., 0], c[..., 1]).to_event(1))

    def sample_specificity(self):
        c = self.specificity_concentration
        return pyro.sample("flag_specificity", dist.Beta(c[..., 0], c[..., 1]).to_event(1))

    def posterior(self, flags, qc, sensitivity, specificity, basal=None):
        """q(artifact | flags, qc, basal) at the given rates (a :class:`BinaryStates`)."""
        model = self.model_ref[0]
        return model.artifact_evidence.posterior(model.artifact_freq, flags, qc, sensitivity,
                                                 specificity, basal)

    def sample_artifact(self, flags, qc, rates, basal=None):
        """Draw ``artifact`` (inside the ``cells`` plate) given the drawn rates and, where
        given, an estimate of the basal state (the biology's part of the covariates)."""
        # a cut: the counts must not inform the QC part (so no score-function term for it)
        return pyro.sample("artifact", self.posterior(flags, qc, *rates, basal),
                           infer={"cut": True})

    def forward(self, counts=None, dosage=None, artifact=None, library=None, *, qc=None,
                flags=None, cell_index=None, num_cells=None, reference=None, n_cells=None):
        rates = (None, None)
        if self.n_flags:
            with pyro.plate("artifact_kinds", self.n_causes, dim=-1):
                sensitivity = self.sample_sensitivity()
            rates = (sensitivity, self.sample_specificity())
        if counts is None:
            return
        with cells_plate(counts, cell_index, num_cells):
            self.sample_artifact(flags, qc, rates)


class CorrelatedGuide(_GuideBase):
    """The CRADLE / SAMS-VAE correlated guide (see module docstring).

    Parameters
    ----------
    model
        The :class:`~cradle_pyro.model.CradleModel` this guide serves.
    gene_mean, gene_std
        Standardisation of log1p-normalised counts (from
        :class:`~cradle_pyro.data.PerturbationData`).
    temperature
        Of the straight-through mask relaxation.
    """

    correlated = True

    def __init__(self, model, gene_mean=None, gene_std=None, temperature=0.5,
                 mask_init_logit: float = 0.0):
        super().__init__(model, gene_mean, gene_std, use_offsets=self.correlated,
                         temperature=temperature)
        cfg, P, A, d = model.config, model.n_perturbations, model.n_artifacts, model.latent_dim
        if cfg.use_embeddings:
            self.mask_logits = PyroParam(torch.full((P, d), mask_init_logit))
            if cfg.use_mask and self.correlated:
                self.effect_net = EffectNet(P, d, cfg.hidden_dim, cfg.effect_encoder_layers)
            else:
                self.effect_loc = PyroParam(torch.zeros(P, d))
                self.effect_scale = PyroParam(torch.full((P, d), 0.1), constraint=constraints.positive)
            if cfg.beta_bernoulli_mask:
                self.mask_rate_concentration = PyroParam(
                    torch.tensor(cfg.mask_beta, dtype=torch.float32).expand(d, 2).clone(),
                    constraint=constraints.positive)
        if model.use_target_effects:
            self.target_effect_loc = PyroParam(torch.zeros(P))
            self.target_effect_scale = PyroParam(torch.full((P,), 0.1),
                                                 constraint=constraints.positive)
        if model.use_library_effects:
            self.library_effect_loc = PyroParam(torch.zeros(P))
            self.library_effect_scale = PyroParam(torch.full((P,), 0.1),
                                                  constraint=constraints.positive)
        if model.use_gene_effects:
            self.gene_effect_loc = PyroParam(torch.zeros(P, model.n_genes))
            self.gene_effect_scale = PyroParam(torch.full((P, model.n_genes), 0.01),
                                               constraint=constraints.positive)
        if cfg.use_artifact_latents:
            self.artifact_effect_loc = PyroParam(torch.zeros(A, d))
            self.artifact_effect_scale = PyroParam(torch.full((A, d), 0.1),
                                                   constraint=constraints.positive)
        # q(decoder weights), one pair per latent weight (none while the decoder is a point
        # estimate); each starts at the decoder's initial weights and a small scale (0.5 % of
        # the prior's): on SBC screens (benchmarks/sbc.py) a start at a quarter of it gave no
        # wider intervals and made early training noisy
        self.decoder_weight_loc = torch.nn.ParameterList()
        self.decoder_weight_tril = torch.nn.ParameterList()
        start = math.log(DECODER_SCALE_START * cfg.decoder_weight_scale)
        for _, i, _ in model.decoder_weight_sites():
            weight = model.decoder.net[i].weight.detach()
            self.decoder_weight_loc.append(torch.nn.Parameter(weight.clone()))
            # one full covariance per output unit (row): the hidden units are strongly
            # correlated features, so a row's weights are too, and a mean-field guide
            # gives each only its conditional variance
            self.decoder_weight_tril.append(torch.nn.Parameter(
                torch.diag_embed(torch.full_like(weight, start))))
        if cfg.latent_artifacts:
            self.artifact_guide = ArtifactGuide(model)

    def effect_distribution(self, mask):
        """q(effect | mask): the effect network, or free parameters (mean-field, no mask)."""
        if hasattr(self, "effect_net"):
            return dist.Normal(*self.effect_net(mask))
        return dist.Normal(self.effect_loc, self.effect_scale)

    def sample_globals(self):
        """effect, mask, artifact_effect and (latent artifact state) the flag rates drawn."""
        cfg, m = self.model.config, self.model
        effect = mask = artifact_effect = flag_rates = None
        perturbations = pyro.plate("perturbations", m.n_perturbations, dim=-1)
        if m.use_library_effects:
            with perturbations:
                pyro.sample("library_effect", dist.Normal(self.library_effect_loc,
                                                          self.library_effect_scale))
        if cfg.use_embeddings:
            if cfg.beta_bernoulli_mask:
                c = self.mask_rate_concentration
                pyro.sample("mask_rate", dist.Beta(c[:, 0], c[:, 1]).to_event(1))
            with perturbations:
                if cfg.use_mask:
                    mask = pyro.sample("mask", BernoulliStraightThrough(
                        self.mask_logits, self.temperature).to_event(1))
                effect = pyro.sample("effect", self.effect_distribution(mask).to_event(1))
                if m.use_target_effects:
                    pyro.sample("target_effect", dist.Normal(self.target_effect_loc,
                                                             self.target_effect_scale))
                if m.use_gene_effects:
                    pyro.sample("gene_effect", dist.Normal(self.gene_effect_loc,
                                                           self.gene_effect_scale).to_event(1))
        for (site, _, _), loc, raw in zip(m.decoder_weight_sites(), self.decoder_weight_loc,
                                          self.decoder_weight_tril):
            # unit lower-triangular times the scales: an optimiser's step on an
            # off-diagonal entry is then relative to the scales, not absolute
            scale = raw.diagonal(dim1=-2, dim2=-1).exp()
            unit = raw.tril(-1) + torch.eye(raw.shape[-1], device=raw.device)
            tril = unit * scale.unsqueeze(-2)
            pyro.sample(site, dist.MultivariateNormal(loc, scale_tril=tril).to_event(1))
        if cfg.use_artifact_latents or cfg.latent_artifacts:
            with pyro.plate("artifact_kinds", m.n_artifacts, dim=-1):
                if cfg.use_artifact_latents:
                    artifact_effect = pyro.sample("artifact_effect", dist.Normal(
                        self.artifact_effect_loc, self.artifact_effect_scale).to_event(1))
                if cfg.latent_artifacts and self.artifact_guide.n_flags:
                    sensitivity = self.artifact_guide.sample_sensitivity()
        if cfg.latent_artifacts:
            flag_rates = ((sensitivity, self.artifact_guide.sample_specificity())
                          if self.artifact_guide.n_flags else (None, None))
        return effect, mask, artifact_effect, flag_rates

    def forward(self, counts=None, dosage=None, artifact=None, library=None, *, qc=None,
                flags=None, cell_index=None, num_cells=None, reference=None, n_cells=None):
        *globals_, flag_rates = self.sample_globals()
        latent = hasattr(self, "artifact_guide")
        if counts is None:  # nothing observed: only the globals have a posterior
            return
        if library is None:
            library = counts.sum(-1)
        with cells_plate(counts, cell_index, num_cells):
            if latent:  # abduct the artifact state from its QC evidence; q(basal) reads it
                artifact = self.artifact_guide.sample_artifact(
                    flags, qc, flag_rates, self.basal_estimate(counts, dosage, library, globals_))
            self.sample_basal(counts, dosage, artifact, library, globals_)


class MeanFieldGuide(CorrelatedGuide):
    """Independent factors: q(mask) q(effect) q(artifact_effect) q(basal | x)."""

    correlated = False


class BasalGuide(_GuideBase):
    """The amortised q(basal | x) alone; pair it with an autoguide for the globals.

    See :class:`CombinedGuide` for an example.
    """

    def __init__(self, model, gene_mean=None, gene_std=None):
        super().__init__(model, gene_mean, gene_std, use_offsets=False)

    def forward(self, counts=None, dosage=None, artifact=None, library=None, *, qc=None,
                flags=None, cell_index=None, num_cells=None, reference=None, n_cells=None):
        if counts is None:
            return
        if library is None:
            library = counts.sum(-1)
        with cells_plate(counts, cell_index, num_cells):
            self.sample_basal(counts, dosage, artifact, library, (None, None, None))


class MaskGuide(PyroModule):
    """q(mask) alone: independent straight-through Bernoulli factors (pmf scored).

    The discrete part to compose with an autoguide on the continuous globals
    and :class:`BasalGuide` in a :class:`CombinedGuide`.
    """

    def __init__(self, model: CradleModel, temperature: float = 0.5, init_logit: float = 0.0):
        super().__init__()
        self.n_perturbations, self.latent_dim = model.n_perturbations, model.latent_dim
        self.temperature = temperature
        self.mask_logits = PyroParam(torch.full((self.n_perturbations, self.latent_dim), init_logit))

    def forward(self, *args, **kwargs):
        with pyro.plate("perturbations", self.n_perturbations, dim=-1):
            pyro.sample("mask", BernoulliStraightThrough(self.mask_logits, self.temperature)
                        .to_event(1))


class _PlatesOnce(Messenger):
    """Record each plate once when several guide parts open the same plate."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def _process_message(self, msg):
        if msg["type"] == "sample" and type(msg["fn"]).__name__ == "_Subsample":
            if msg["name"] in self.seen:
                msg["infer"] = dict(msg["infer"] or {}, _do_not_trace=True, is_auxiliary=True)
            else:
                self.seen.add(msg["name"])


class CombinedGuide(PyroModule):
    """Run several guides in turn, each serving its own sites.

    Parts may open the same plates (an autoguide and a mask guide both open
    ``perturbations``): each plate is recorded once. Pyro's ``AutoGuideList``
    pre-creates every model plate with its own random subsample of cells,
    which clashes with an amortised part that opens the ``cells`` plate with
    the minibatch's cells; this is the documented equivalent.

    Example
    -------
    >>> from pyro import poutine
    >>> from pyro.infer.autoguide import AutoNormal
    >>> from cradle_pyro.config import ModelConfig
    >>> model = CradleModel(30, 4, 1, ModelConfig(model="cpa"))
    >>> guide = CombinedGuide(AutoNormal(poutine.block(model, expose=["effect", "gene_effect", "library_effect"])),
    ...                       BasalGuide(model))

    With a mask (``cradle``, ``sams``): ``CombinedGuide(AutoNormal(poutine.block(model,
    expose=["effect", "gene_effect", "library_effect", "artifact_effect"])), MaskGuide(model), BasalGuide(model))``.
    """

    def __init__(self, *parts):
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, *args, **kwargs):
        with _PlatesOnce():
            for part in self.parts:
                part(*args, **kwargs)


def guide_part(guide, wanted):
    """The guide, or the first part of a composed guide, for which ``wanted(part)`` holds.

    Looks through :class:`CombinedGuide` parts, Pyro ``AutoGuideList`` members
    and a guide's ``artifact_guide``; ``None`` when no part qualifies.
    """
    if wanted(guide):
        return guide
    parts = list(getattr(guide, "parts", [])) + list(getattr(guide, "guides", []))
    if hasattr(guide, "artifact_guide"):
        parts.append(guide.artifact_guide)
    for part in parts:
        found = guide_part(part, wanted)
        if found is not None:
            return found
    return None


def basal_posterior_of(guide):
    """The guide, or the part of a composed guide, exposing the basal-posterior protocol
    (``basal_features`` and ``basal_distribution``); ``None`` without one."""
    return guide_part(guide, lambda g: hasattr(g, "basal_features")
                      and hasattr(g, "basal_distribution"))


def make_guide(kind: str, model: CradleModel, gene_mean=None, gene_std=None,
               temperature: float = 0.5):
    """``"correlated"`` (default) or ``"mean-field"``; ``temperature`` of the correlated
    guide's straight-through mask (the published code uses 1.0)."""
    if kind == "correlated":
        return CorrelatedGuide(model, gene_mean, gene_std, temperature=temperature)
    if kind in ("mean-field", "meanfield"):
        return MeanFieldGuide(model, gene_mean, gene_std)
    from .errors import CradleInputError

    raise CradleInputError(f"guide={kind!r}; use 'correlated' or 'mean-field'")


__all__ = ["ArtifactGuide", "BasalGuide", "guide_part", "CombinedGuide", "CorrelatedGuide", "MaskGuide", "MeanFieldGuide",
           "basal_posterior_of", "make_guide"]
