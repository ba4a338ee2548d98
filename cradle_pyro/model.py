"""The CRADLE causal generative model, one explicit Pyro program.

Sample sites (their names are public API; DESIGN.md, causal story):

===================  =====  ==============  =============================================
site                 shape  plate           role
===================  =====  ==============  =============================================
``effect``           P × d  perturbations   latent shift of each perturbation
``mask``             P × d  perturbations   which latent dims a perturbation moves
``mask_rate``        d      —               Beta prior on the mask (``svae+`` only)
``artifact_effect``  A × d  artifact_kinds  latent shift of each artifact kind
``target_effect``    P      perturbations   direct (cis) log-fold effect of a
                                            perturbation on its own target gene,
                                            when the target is a measured gene
``gene_effect``      P × G  perturbations   direct sparse log-fold effect of a
                                            perturbation on every gene (``gene_effects``)
``library_effect``   P      perturbations   log-fold effect of a perturbation on the
                                            library size (``library_effects``)
``decoder_weight``   G × H  —               the decoder's output layer, when it is a
                                            latent (``bayesian_decoder``; and
                                            ``decoder_hidden_weight_<k>`` per hidden
                                            layer with ``bayesian_decoder_layers="all"``)
``dosage``           n × P  cells           treatment received (observed, intervenable)
``artifact``         n × A  cells           artifact state (observed, or latent with
                                            its QC evidence: :mod:`.artifact_state`)
``basal``            n × d  cells           the cell before anything happened
``library``          n      cells           observed; with ``library_effects`` a mediator
                                            of the dosage, else only sampled when no
                                            library size is given
``counts``           n × G  cells           observed UMI counts
===================  =====  ==============  =============================================

::

    z_n      = combine(basal_n, dosage_n @ (effect * mask), artifact_n @ artifact_effect)
    logits_n = decoder(z_n) + Σ_p dosage_np · target_effect_p · onehot(target gene of p)
                            + Σ_p dosage_np · gene_effect_p
    library_n ~ LogNormal(library_loc + dosage_n @ library_effect, library_scale)
    counts_n ~ NB(mean = library_n * softmax(logits_n), dispersion)

The ``target_effect`` path exists because a CRISPRi/CRISPRa guide acts first
on one gene: a low-dimensional latent shared by all genes cannot move one gene
far without moving others, so without it the target's own knockdown is shrunk.
The ``library_effect`` path exists because a perturbation can change how much
RNA a cell holds; normalised expression of low-count genes moves with the
library, so an effect taken at the libraries cells had without the
perturbation is not the effect the data show.

Example
-------
>>> import torch, pyro
>>> from pyro import poutine
>>> model = CradleModel(n_genes=30, n_perturbations=4, n_artifacts=1)
>>> tr = poutine.trace(model).get_trace(n_cells=5)
>>> [n for n in tr.stochastic_nodes if n not in ("perturbations", "artifact_kinds", "cells")]
['library_effect', 'effect', 'mask', 'gene_effect', 'artifact_effect', 'dosage', 'artifact', 'basal', 'library', 'counts']
>>> tuple(tr.nodes["counts"]["value"].shape)
(5, 30)
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam

from .artifact_state import ArtifactEvidence
from .config import ModelConfig
from .distributions import bernoulli_pmf
from .likelihoods import count_distribution
from .nets import Decoder
from .priors import LEARNT, prior_distribution


class CradleModel(PyroModule):
    """p(effect, mask, artifact_effect, dosage, artifact, basal, counts).

    Parameters
    ----------
    n_genes, n_perturbations, n_artifacts
        G, P (single targets) and A (artifact kinds).
    config
        :class:`~cradle_pyro.config.ModelConfig`; its ``model`` switch picks
        the baseline.
    dosage_freq, artifact_freq
        Empirical frequencies: the priors of the exogenous ``dosage`` and
        ``artifact`` sites (only used when they are not observed).
    library_loc, library_scale
        LogNormal of library sizes, used when ``library`` is not given.
    target_gene
        Per perturbation, the index of its target among the genes (-1 when the
        target is not measured); turns on the ``target_effect`` site.
    n_qc_covariates, qc_covariate_names, n_flags
        C QC covariates and their names (:func:`cradle_pyro.qc.artifact_covariates`),
        and F QC flags (default: ``n_artifacts``), the evidence of a latent
        artifact state (``artifact_state="latent"`` only).

    Notes
    -----
    Call signature (the guides take the same arguments)::

        model(counts=None, dosage=None, artifact=None, library=None, *, qc=None,
              flags=None, cell_index=None, num_cells=None, reference=None, n_cells=None)

    ``num_cells`` is the size of the data set the minibatch comes from (the
    cell plate scales local terms by ``num_cells / batch``); ``reference`` is
    read by the guide only. With a latent artifact state, ``artifact`` is
    ignored (the state is not observed; ``poutine.condition`` fixes it) and
    ``flags`` (QC flags per criterion, site ``artifact_flag``) and ``qc``
    (covariates, site ``qc``) are its evidence.
    """

    def __init__(self, n_genes, n_perturbations, n_artifacts, config: ModelConfig | None = None,
                 dosage_freq=None, artifact_freq=None, library_loc=8.0, library_scale=0.5,
                 target_gene=None, n_qc_covariates: int = 0, qc_covariate_names=None,
                 n_flags: int | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.n_genes, self.n_perturbations = n_genes, n_perturbations
        # the artifact site has one column per artifact kind, or per latent cause
        # when the artifact state is latent (its QC flags are then evidence)
        self.n_flags = n_flags if n_flags is not None else n_artifacts
        self.n_artifacts = len(config.artifact_causes) if config.latent_artifacts else n_artifacts
        self.latent_dim = config.latent_dim
        self.register_buffer("dosage_freq", _freq(dosage_freq, n_perturbations))
        self.register_buffer("artifact_freq", _freq(artifact_freq, self.n_artifacts))
        if config.library_effects:  # the untreated cells' library, fitted with the effects on it
            self.library_loc = PyroParam(torch.tensor(float(library_loc)))
            self.library_scale = PyroParam(torch.tensor(float(library_scale)),
                                           constraint=constraints.positive)
        else:
            self.register_buffer("library_loc", torch.tensor(float(library_loc)))
            self.register_buffer("library_scale", torch.tensor(float(library_scale)))
        # gene index of each perturbation's target (-1: not measured)
        self.register_buffer("target_gene", torch.as_tensor(
            target_gene if target_gene is not None else [-1] * n_perturbations, dtype=torch.long))
        self.decoder = Decoder(self.decoder_input_dim, n_genes, config.hidden_dim,
                               config.decoder_layers or config.n_layers)
        self.log_dispersion = PyroParam(torch.zeros(n_genes))
        if str(config.effect_prior).endswith(LEARNT):
            # a hierarchical prior with a learnt scale (type-II maximum likelihood)
            self.effect_log_scale = PyroParam(torch.tensor(float(np.log(config.effect_scale))))
        if self.use_gene_effects and config.gene_effect_prior.endswith(LEARNT):
            # one scale per perturbation: strong perturbations get room, null ones shrink
            self.gene_effect_log_scale = PyroParam(
                torch.full((n_perturbations, 1), float(np.log(config.gene_effect_scale))))
        if config.likelihood == "zinb":
            self.gate_logits = PyroParam(torch.full((n_genes,), -2.0))
        if config.latent_artifacts:
            covariates = qc_covariate_names or [f"qc{j}" for j in range(n_qc_covariates)]
            self.artifact_evidence = ArtifactEvidence(
                config.artifact_causes, self.n_flags if config.artifact_evidence != "covariates" else 0,
                covariates if config.artifact_evidence != "flags" else [],
                config.flag_sensitivity_prior, config.flag_specificity_prior, config.latent_dim)

    @classmethod
    def from_data(cls, data, config: ModelConfig | None = None) -> "CradleModel":
        """A model sized for a :class:`~cradle_pyro.data.PerturbationData`.

        Exogenous-site priors are the training frequencies; the decoder's output
        bias starts at the log mean expression proportions of training cells.
        """
        train = data.indices("train")
        config = config or ModelConfig()
        untreated = train[data.dosage[train].sum(1) == 0]
        # with library effects the LogNormal's centre is the untreated cells' (dosage 0)
        log_lib = np.log(data.library[untreated if config.library_effects and len(untreated) > 1
                                      else train])
        artifact_freq = data.artifact[train].mean(0)
        if config.latent_artifacts:  # the flagged share, spread over the causes
            flagged = data.artifact[train].max(1).mean() if data.n_artifacts else 0.05
            artifact_freq = np.full(len(config.artifact_causes), flagged / len(config.artifact_causes))
        model = cls(data.n_genes, data.n_perturbations, data.n_artifacts, config,
                    dosage_freq=data.dosage[train].mean(0), artifact_freq=artifact_freq,
                    library_loc=float(log_lib.mean()), library_scale=float(log_lib.std() + 1e-3),
                    target_gene=target_gene_index(data.perturbation_names, data.gene_names),
                    n_qc_covariates=data.n_qc_covariates,
                    qc_covariate_names=data.qc_covariate_names, n_flags=data.n_qc_flags)
        if model.config.latent_artifacts:
            model.artifact_evidence.initialise(data.qc_covariates[train][:, :model.artifact_evidence
                                               .n_covariates], data.qc_flags[train])
        props = data.gene_totals("train") / data.library[train].sum()
        with torch.no_grad():
            model.decoder.net[-1].bias.copy_(torch.as_tensor(np.log(props + 1e-7), dtype=torch.float32))
        return model

    # ------------------------------------------------------------ structure
    @property
    def perturbation_offset_dim(self) -> int:
        return self.latent_dim if self.config.use_embeddings else self.n_perturbations

    @property
    def artifact_offset_dim(self) -> int:
        if self.config.use_artifact_latents:
            return self.latent_dim
        return self.n_artifacts if self.config.artifact_to_decoder else 0

    @property
    def decoder_input_dim(self) -> int:
        if self.config.resolved_combine == "sum":
            return self.latent_dim
        return self.latent_dim + self.perturbation_offset_dim + self.artifact_offset_dim

    @property
    def use_target_effects(self) -> bool:
        """Whether the ``target_effect`` site exists: switched on and a target is measured."""
        return bool(self.config.target_effects and self.config.use_embeddings
                    and (self.target_gene >= 0).any())

    @property
    def use_gene_effects(self) -> bool:
        """Whether the ``gene_effect`` site exists."""
        return bool(self.config.gene_effects and self.config.use_embeddings)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live."""
        return self.dosage_freq.device

    @property
    def effect_prior_scale(self):
        """The effect prior's scale: fixed (``effect_scale``) or learnt (``*-learnt-scale``)."""
        if hasattr(self, "effect_log_scale"):
            return self.effect_log_scale.exp()
        return self.config.effect_scale

    @property
    def gene_effect_prior_scale(self):
        """The gene-effect prior's scale: fixed, or learnt per perturbation (P × 1)."""
        if hasattr(self, "gene_effect_log_scale"):
            return self.gene_effect_log_scale.exp()
        return self.config.gene_effect_scale

    @property
    def use_library_effects(self) -> bool:
        """Whether the ``library_effect`` site exists (the library is a mediator)."""
        return bool(self.config.library_effects)

    @property
    def dispersion(self):
        return self.log_dispersion.exp()

    def perturbation_offset(self, dosage, effect=None, mask=None):
        """dosage @ (effect * mask), or the dosage itself for ``cvae``."""
        if not self.config.use_embeddings:
            return dosage
        shift = effect if mask is None else effect * mask
        return torch.matmul(dosage, shift)

    def artifact_offset(self, artifact, artifact_effect=None):
        """artifact @ artifact_effect; the raw state for ``cvae``; None without."""
        if self.config.use_artifact_latents:
            return torch.matmul(artifact, artifact_effect)
        return artifact if self.config.artifact_to_decoder else None

    def combine(self, basal, perturbation_offset, artifact_offset):
        """The decoder input z_n.

        ``sum``: basal + offsets. ``concat``: the offsets concatenated to the
        basal state. For learnt embeddings, concat is parametrised as
        ``[basal + offsets, offsets]``: the decoder's first layer is linear, so
        this spans exactly the functions of ``[basal, offsets]`` (an invertible
        linear change of input), but starts from the sum model's geometry, in
        which the effects are learnt instead of being absorbed into the basal
        state (simulator, 40 epochs: ATE r 0.35 with plain concatenation).
        """
        offsets = [perturbation_offset] + ([artifact_offset] if artifact_offset is not None else [])
        if self.config.resolved_combine == "sum":
            return sum(torch.broadcast_tensors(basal, *offsets))
        if self.config.use_embeddings:
            basal = sum(torch.broadcast_tensors(basal, *offsets))
        return torch.cat(_broadcast_leading([basal] + offsets), -1)

    def target_shift(self, dosage, target_effect):
        """Σ_p dosage_p · target_effect_p on each perturbation's target gene's logit."""
        measured = torch.nonzero(self.target_gene >= 0).squeeze(-1)
        contribution = (dosage * target_effect.unsqueeze(-2)).index_select(-1, measured)
        shape = contribution.shape[:-1] + (self.n_genes,)
        return torch.zeros(shape, device=dosage.device, dtype=dosage.dtype).index_add(
            -1, self.target_gene[measured], contribution)

    def direct_shift(self, dosage, target_effect=None, gene_effect=None):
        """The logit shift of the direct paths (0 where both are off)."""
        shift = 0.0
        if target_effect is not None:
            shift = shift + self.target_shift(dosage, target_effect)
        if gene_effect is not None:
            shift = shift + torch.matmul(dosage, gene_effect)
        return shift

    def library_shift(self, dosage, library_effect):
        """dosage @ library_effect: the log-library shift a treatment causes (0 without)."""
        if library_effect is None:
            return torch.zeros(dosage.shape[:-1], device=dosage.device, dtype=dosage.dtype)
        return (dosage * library_effect.unsqueeze(-2)).sum(-1)

    def library_distribution(self, dosage, library_effect):
        """p(library | dosage): LogNormal around the untreated cells' log library, shifted."""
        loc = self.library_loc + self.library_shift(dosage, library_effect)
        return dist.LogNormal(loc, self.library_scale)

    def counterfactual_library(self, library, dosage, new_dosage, library_effect):
        """The library ``library`` (observed under ``dosage``) would have had under ``new_dosage``.

        Abduction of the LogNormal's noise: the cell keeps its own deviation
        from its treatment's mean log library, and only the treatment's shift
        changes: ``library · exp(shift(new_dosage) − shift(dosage))``. Without
        library effects the library is exogenous and comes back unchanged.

        >>> import torch
        >>> model = CradleModel(5, 2, 1, ModelConfig(library_effects=True))
        >>> model.counterfactual_library(torch.tensor([100.]), torch.tensor([[1., 0.]]),
        ...                              torch.tensor([0., 0.]), torch.tensor([0.5, 0.]))
        tensor([60.6531])
        """
        if library_effect is None:
            return library
        shift = (self.library_shift(new_dosage, library_effect)
                 - self.library_shift(dosage, library_effect))
        return library * shift.exp()

    # --------------------------------------------------------------- priors
    def _prior(self, site, default, shape, scale=1.0):
        spec = self.config.priors.get(site, default)
        return prior_distribution(spec, shape, scale, device=self.dosage_freq.device)

    def sample_globals(self):
        """effect, mask (and mask_rate), artifact_effect, (target_effect, gene_effect), flag
        rates, library_effect; ``None`` where off."""
        cfg, d, P, A = self.config, self.latent_dim, self.n_perturbations, self.n_artifacts
        effect = mask = artifact_effect = target_effect = gene_effect = flag_rates = None
        library_effect = None
        perturbations = pyro.plate("perturbations", P, dim=-1)  # one plate, entered where needed
        if self.use_library_effects:
            with perturbations:
                library_effect = pyro.sample("library_effect", self._prior(
                    "library_effect", "normal", (P,), cfg.library_effect_scale))
        if cfg.use_embeddings:
            if cfg.beta_bernoulli_mask:
                a, b = (torch.tensor(float(v), device=self.dosage_freq.device) for v in cfg.mask_beta)
                rate = pyro.sample("mask_rate", dist.Beta(a, b).expand([d]).to_event(1))
            else:
                rate = torch.full((d,), cfg.mask_prob, device=self.dosage_freq.device)
            # priors are built outside their plates: a prior may sample its own
            # hyper-parameters (one per particle, not one per perturbation)
            effect_prior = self._prior("effect", cfg.effect_prior, (P, d), self.effect_prior_scale)
            target_prior = (self._prior("target_effect", "normal", (P,), cfg.target_effect_scale)
                            if self.use_target_effects else None)
            gene_prior = (self._prior("gene_effect", cfg.gene_effect_prior, (P, self.n_genes),
                                      self.gene_effect_prior_scale) if self.use_gene_effects else None)
            with perturbations:
                effect = pyro.sample("effect", effect_prior.to_event(1))
                if cfg.use_mask:
                    # rate is (d,) or, under a particle plate, (..., 1, d)
                    probs = rate.expand(*rate.shape[:-2], P, d) if rate.dim() > 1 else rate.expand(P, d)
                    mask = pyro.sample("mask", bernoulli_pmf(probs).to_event(1))
                if self.use_target_effects:
                    target_effect = pyro.sample("target_effect", target_prior)
                if self.use_gene_effects:
                    gene_effect = pyro.sample("gene_effect", gene_prior.to_event(1))
        if cfg.use_artifact_latents or cfg.latent_artifacts:
            artifact_prior = (self._prior("artifact_effect", "normal", (A, d))
                              if cfg.use_artifact_latents else None)
            with pyro.plate("artifact_kinds", A, dim=-1):
                if cfg.use_artifact_latents:
                    artifact_effect = pyro.sample("artifact_effect", artifact_prior.to_event(1))
                if cfg.latent_artifacts and self.artifact_evidence.n_flags:
                    sensitivity = self.artifact_evidence.sample_sensitivity()
        if cfg.latent_artifacts:
            flag_rates = ((sensitivity, self.artifact_evidence.sample_specificity())
                          if self.artifact_evidence.n_flags else (None, None))
        return effect, mask, artifact_effect, (target_effect, gene_effect), flag_rates, library_effect

    def decoder_weight_sites(self) -> list:
        """``(site, layer index in decoder.net, shape)`` of each decoder weight that is a
        latent: the output layer's (``decoder_weight``) with ``bayesian_decoder``, and the
        hidden layers' (``decoder_hidden_weight_<k>``) with ``bayesian_decoder_layers="all"``."""
        if not self.config.bayesian_decoder:
            return []
        linear = [i for i, m in enumerate(self.decoder.net) if isinstance(m, torch.nn.Linear)]
        hidden = linear[:-1] if self.config.bayesian_decoder_layers == "all" else []
        return ([(f"decoder_hidden_weight_{k}", i, tuple(self.decoder.net[i].weight.shape))
                 for k, i in enumerate(hidden)]
                + [("decoder_weight", linear[-1], tuple(self.decoder.net[linear[-1]].weight.shape))])

    def sample_decoder_weight(self):
        """The decoder's latent weights from their prior (layer index → weights), or ``None``
        when the decoder is a point estimate: latents so that what the cells leave unknown
        about each gene's response to the latent state reaches every interval."""
        sites = self.decoder_weight_sites()
        if not sites:
            return None
        scale = self.config.decoder_weight_scale
        return {i: pyro.sample(site, dist.Normal(torch.zeros(shape, device=self.device),
                                                 torch.full(shape, scale, device=self.device))
                               .to_event(2))
                for site, i, shape in sites}

    # ---------------------------------------------------------------- story
    def forward(self, counts=None, dosage=None, artifact=None, library=None, *, qc=None,
                flags=None, cell_index=None, num_cells=None, reference=None, n_cells=None):
        n = _batch_size(counts, dosage, artifact, library, n_cells)
        device = self.dosage_freq.device
        (effect, mask, artifact_effect, direct_effects, flag_rates,
         library_effect) = self.sample_globals()
        decoder_weight = self.sample_decoder_weight()
        latent = self.config.latent_artifacts
        if latent:  # not observed: the QC flags and covariates are evidence of it
            artifact = None
        subsample = cell_index if cell_index is not None else torch.arange(n, device=device)
        with pyro.plate("cells", num_cells or n, subsample=subsample, dim=-1):
            dosage = pyro.sample("dosage", bernoulli_pmf(self.dosage_freq).expand([n, self.n_perturbations])
                                 .to_event(1), obs=dosage)
            artifact = pyro.sample("artifact", bernoulli_pmf(self.artifact_freq)
                                   .expand([n, self.n_artifacts]).to_event(1), obs=artifact)
            basal = pyro.sample("basal", self._prior("basal", "normal", (n, self.latent_dim)).to_event(1))
            if latent:  # the QC covariates follow the cell's biology (basal) and its artifacts
                self.artifact_evidence.observe(artifact, flags, qc, *flag_rates, basal=basal)
            z = self.combine(basal, self.perturbation_offset(dosage, effect, mask),
                             self.artifact_offset(artifact, artifact_effect))
            if library is None or library_effect is not None:
                prior = self.library_distribution(dosage, library_effect)
                library = pyro.sample("library", prior.expand(
                    torch.broadcast_shapes(prior.batch_shape, (n,))), obs=library)
            logits = self.decoder(z, decoder_weight) + self.direct_shift(dosage, *direct_effects)
            # log expected counts: log library + log proportions (softmax of the logits)
            log_mean = library.log().unsqueeze(-1) + torch.log_softmax(logits, -1)
            pyro.sample("counts", count_distribution(self.config.likelihood, dispersion=self.dispersion,
                                                     gate_logits=getattr(self, "gate_logits", None),
                                                     log_mean=log_mean), obs=counts)
        return z


def target_gene_index(perturbation_names, gene_names) -> list:
    """Index of each perturbation target among the genes, -1 where it is not measured."""
    where = {g: i for i, g in enumerate(gene_names)}
    return [where.get(p, -1) for p in perturbation_names]


def _freq(freq, n):
    if freq is None:
        return torch.full((n,), 0.5)
    return torch.as_tensor(freq, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)


def _batch_size(counts, dosage, artifact, library, n_cells):
    for t in (counts, dosage, artifact):
        if t is not None:
            return t.shape[-2]
    if library is not None:
        return library.shape[-1]
    if n_cells is None:
        raise ValueError("pass counts, dosage, artifact, library or n_cells")
    return n_cells


def _broadcast_leading(parts):
    """Broadcast all but the last dimension (for concatenation)."""
    lead = torch.broadcast_shapes(*[p.shape[:-1] for p in parts])
    return [p.expand(*lead, p.shape[-1]) for p in parts]
