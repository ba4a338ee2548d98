"""The artifact state as latent causes, and what QC measures of them.

With ``ModelConfig(artifact_state="latent")`` a cell's ``artifact`` site is
not observed: it holds K latent 0/1 causes (``config.artifact_causes``, by
default ``damaged``, ``low_complexity``, ``doublet``). They cause the counts
(through ``artifact_effect``, one latent shift per cause, as before) and two
observed children added here (``artifact_evidence``: the covariates by
default, the flags, or both):

====================  =====  ==============  ============================================
site                  shape  plate           role
====================  =====  ==============  ============================================
``flag_sensitivity``  K × A  artifact_kinds  P(cause k trips QC flag a), Beta prior
``flag_specificity``  A      —               P(QC does not flag a | no cause), Beta prior
``artifact_flag``     n × A  cells           the QC flags (k·MAD rules, scrublet):
                                             noisy labels of the causes (noisy-OR)
``qc``                n × C  cells           standardised QC covariates (library size,
                                             detected genes, logit mt / ribo shares,
                                             doublet score)
====================  =====  ==============  ============================================

::

    artifact_nk      ~ Bernoulli(rate of cause k)
    artifact_flag_na ~ Bernoulli(1 − specificity_a · Π_k (1 − sensitivity_ka)^artifact_nk)
    qc_n             ~ MultivariateStudentT(qc_df, qc_loc + basal_n @ qc_basal
                                                   + artifact_n @ qc_shift,
                                            scale_tril = D_n · qc_scale_tril),
                       D_n = diag(exp(artifact_n @ qc_log_scale_shift))

The ``basal_n @ qc_basal`` term is the cell's biology: a cell type or state
can hold more mitochondrial RNA or less RNA altogether (a QC tail that k·MAD
flags), and its expression profile, through its basal state, says so. Without
it, clean states whose QC covariates sit in a damaged-looking tail were taken
for the ``damaged`` cause (simulator with ``qc_overlap=1``: the damaged cause's
own AUROC fell to 0.45–0.51).

So a threshold's verdict is evidence, weighed against the counts and the
covariates: a clean cell that a k·MAD rule flags (specificity < 1) can be
abducted as clean, and a damaged cell it missed (sensitivity < 1) as damaged.
The covariates are correlated (library size and detected genes move together)
and heavy-tailed, so clean cells get a full scale matrix and a Student-t
(learnt degrees of freedom); with a diagonal Normal the causes' components
absorbed its shoulders (a third of clean cells given to ``low_complexity`` on
the simulator), and with a full-covariance Normal they still took most clean
cells that a threshold flagged. The covariate regression's location, Cholesky factor and
per-cause shifts are point estimates (learnt ``PyroParam``; empirical Bayes). Known causes start from
their QC signature (:data:`SIGNATURES`, in robust standard deviations), which
is what tells the causes apart; the data then move them. The flags are a
function of the covariates, so treating both as conditionally independent
children counts that evidence twice: the flags anchor what an artifact is,
the covariates say how far a cell lies from the threshold.

Example
-------
>>> import torch
>>> from pyro import poutine
>>> from cradle_pyro.config import ModelConfig
>>> from cradle_pyro.model import CradleModel
>>> cfg = ModelConfig(artifact_state="latent", artifact_evidence="both")
>>> model = CradleModel(20, 2, 1, cfg, n_qc_covariates=3)
>>> tr = poutine.trace(model).get_trace(n_cells=4)
>>> tr.nodes["artifact"]["is_observed"], tuple(tr.nodes["artifact"]["value"].shape)
(False, (4, 3))
>>> tuple(tr.nodes["artifact_flag"]["value"].shape), tuple(tr.nodes["qc"]["value"].shape)
((4, 1), (4, 3))
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from .distributions import BinaryStates, bernoulli_pmf, binary_states

# Where each known cause moves the QC covariates at the start of training, in
# robust standard deviations (qc.artifact_covariates names): damaged cells lose
# cytoplasmic mRNA (fewer counts and genes, a larger mitochondrial share);
# low-complexity cells lose most transcripts; doublets hold two cells' mRNA.
SIGNATURES = {
    "damaged": {"logit_pct_mt": 3.0, "log_total_counts": -2.0, "log_n_genes": -2.0},
    "low_complexity": {"log_total_counts": -4.0, "log_n_genes": -3.0},
    "doublet": {"log_total_counts": 1.5, "log_n_genes": 1.0, "doublet_score": 3.0},
}


# covariates that measure an artifact itself, which a cell's biology does not move
NOT_BIOLOGICAL = ("doublet_score",)


class ArtifactEvidence(PyroModule):
    """p(flag_sensitivity, flag_specificity) and p(artifact_flag, qc | artifact).

    Parameters
    ----------
    causes
        Names of the K latent causes.
    n_flags
        A, QC flag columns (the data's artifact kinds).
    covariate_names
        The C QC covariates (:func:`cradle_pyro.qc.artifact_covariates`).
    sensitivity_prior, specificity_prior
        (a, b) of the Beta priors.
    """

    def __init__(self, causes, n_flags: int, covariate_names, sensitivity_prior=(2.0, 2.0),
                 specificity_prior=(18.0, 2.0), latent_dim: int = 0):
        super().__init__()
        self.causes, self.covariate_names = list(causes), list(covariate_names)
        K, A, C = len(self.causes), n_flags, len(self.covariate_names)
        self.n_causes, self.n_flags, self.n_covariates = K, A, C
        self.register_buffer("sensitivity_prior", torch.tensor(sensitivity_prior, dtype=torch.float32))
        self.register_buffer("specificity_prior", torch.tensor(specificity_prior, dtype=torch.float32))
        shift = torch.tensor([[SIGNATURES.get(k, {}).get(c, 0.0) for c in self.covariate_names]
                              for k in self.causes], dtype=torch.float32).reshape(K, C)
        self.qc_loc = PyroParam(torch.zeros(C))
        self.qc_df = PyroParam(torch.tensor(5.0), constraint=constraints.greater_than(2.0))
        self.qc_scale_tril = PyroParam(torch.eye(C), constraint=constraints.lower_cholesky)
        self.qc_shift = PyroParam(shift)
        self.qc_log_scale_shift = PyroParam(torch.full((K, C), 0.5))
        # the biology's part of the covariates (starts at none); a doublet score measures
        # an artifact, not a cell state, so biology does not move it
        self.qc_basal = PyroParam(torch.zeros(latent_dim, C))
        self.register_buffer("qc_biological", torch.tensor(
            [float(c not in NOT_BIOLOGICAL) for c in self.covariate_names]).reshape(C))

    def initialise(self, covariates: np.ndarray, flags: np.ndarray):
        """Start the clean cells' covariate location and covariance at the unflagged cells'."""
        if not self.n_covariates:
            return
        clean = flags.max(1) == 0 if flags.shape[1] else np.ones(len(flags), bool)
        base = covariates[clean] if clean.sum() > self.n_covariates else covariates
        cov = np.cov(base, rowvar=False).reshape(self.n_covariates, self.n_covariates)
        tril = np.linalg.cholesky(cov + 1e-3 * np.eye(self.n_covariates))
        with torch.no_grad():
            self.qc_loc.copy_(torch.as_tensor(base.mean(0), dtype=torch.float32))
            self.qc_scale_tril.copy_(torch.as_tensor(tril, dtype=torch.float32))

    def sample_sensitivity(self):
        """flag_sensitivity (K × A); call inside the ``artifact_kinds`` plate."""
        return pyro.sample("flag_sensitivity", dist.Beta(*self.sensitivity_prior.unbind())
                           .expand([self.n_causes, self.n_flags]).to_event(1))

    def sample_specificity(self):
        """flag_specificity (A)."""
        return pyro.sample("flag_specificity", dist.Beta(*self.specificity_prior.unbind())
                           .expand([self.n_flags]).to_event(1))

    def flag_probability(self, artifact, sensitivity, specificity):
        """P(flag_a = 1 | causes): noisy-OR of the causes and a false-flag rate."""
        keep = torch.exp(torch.matmul(artifact, torch.log1p(-sensitivity.clamp(max=1 - 1e-6))))
        return 1 - specificity * keep

    def covariate_distribution(self, artifact, basal=None):
        """Multivariate Student-t over the C covariates given the causes (…, n, K) and
        the basal state (…, n, d; ``None``: the population's centre)."""
        loc = self.qc_loc + torch.matmul(artifact, self.qc_shift)
        if basal is not None and self.qc_basal.shape[0]:
            loc = loc + torch.matmul(basal, self.qc_basal * self.qc_biological)
        stretch = torch.exp(torch.matmul(artifact, self.qc_log_scale_shift))
        return dist.MultivariateStudentT(self.qc_df, loc,
                                         scale_tril=stretch.unsqueeze(-1) * self.qc_scale_tril)

    def log_evidence(self, artifact, flags, qc, sensitivity, specificity, basal=None):
        """log p(flags, qc | artifact, basal) per cell (terms of missing evidence left out)."""
        out = 0.0
        if self.n_flags and flags is not None:
            probs = self.flag_probability(artifact, sensitivity, specificity).clamp(1e-6, 1 - 1e-6)
            out = out + bernoulli_pmf(probs).log_prob(flags).sum(-1)
        if self.n_covariates and qc is not None:
            out = out + self.covariate_distribution(artifact, basal).log_prob(
                qc[..., :self.n_covariates])
        return out

    def posterior(self, prior_rate, flags, qc, sensitivity, specificity,
                  basal=None) -> BinaryStates:
        """p(artifact | flags, qc, basal) exactly, by enumerating the 2^K joint states.

        ``sensitivity`` (…, K, A) and ``specificity`` (…, 1, A) or (A,) (``None``
        without flag evidence); ``basal`` (…, cells, d) or ``None``; returns a
        :class:`BinaryStates` over (…, cells).
        """
        states = binary_states(self.n_causes, prior_rate.device, prior_rate.dtype)  # (S, K)
        log_prior = bernoulli_pmf(prior_rate).log_prob(states).sum(-1)          # (S,)
        # evaluate every state for every cell: states on a new dim before the cells
        a = states.unsqueeze(-2)                                                # (S, 1, K)
        sens = spec = None
        if self.n_flags:
            sens = sensitivity.unsqueeze(-3)                                    # (…, 1, K, A)
            spec = specificity.unsqueeze(-3) if specificity.dim() > 1 else specificity
        basal = basal.unsqueeze(-3) if basal is not None else None             # (…, 1, n, d)
        log_ev = self.log_evidence(a, flags, qc, sens, spec, basal)             # (…, S, n)
        if not torch.is_tensor(log_ev):  # no evidence at all: the prior
            log_ev = torch.zeros(states.shape[0], 1, device=states.device)
        logits = (log_prior.unsqueeze(-1) + log_ev).movedim(-2, -1)             # (…, n, S)
        return BinaryStates(logits)

    def observe(self, artifact, flags, qc, sensitivity, specificity, basal=None):
        """The flags and covariates, inside the model's ``cells`` plate."""
        if self.n_flags:
            probs = self.flag_probability(artifact, sensitivity, specificity).clamp(1e-6, 1 - 1e-6)
            pyro.sample("artifact_flag", bernoulli_pmf(probs).to_event(1), obs=flags)
        if self.n_covariates:
            pyro.sample("qc", self.covariate_distribution(artifact, basal),
                        obs=None if qc is None else qc[..., :self.n_covariates])
