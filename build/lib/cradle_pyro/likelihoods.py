"""Count likelihoods: negative binomial (default), Poisson, zero-inflated NB.

All are parametrised by the expected counts ``mean = library · proportions``.

Example
-------
>>> import torch
>>> d = count_distribution("nb", torch.full((2, 3), 5.0), dispersion=torch.ones(3))
>>> tuple(d.batch_shape), tuple(d.event_shape)
((2,), (3,))
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F


class NegativeBinomialCounts(dist.NegativeBinomial):
    """``NegativeBinomial(total_count=θ, logits=t)`` with θ per gene, scored cheaply.

    The same distribution as Pyro's; its ``log_prob`` computes the terms that
    depend only on the counts and θ (three ``lgamma``, and in the backward
    pass ``digamma``) once per cell and gene, not once per vectorised
    particle, and uses one ``logsigmoid`` instead of two:
    ``lgamma(k+θ) − lgamma(k+1) − lgamma(θ) + (θ+k)·logsigmoid(−t) + k·t``.
    These terms were 30 % of a training step at 2,000 genes and 5 particles.

    Example
    -------
    >>> theta, t, k = torch.tensor([2.0, 5.0]), torch.randn(3, 4, 2), torch.tensor([[0., 3.]] * 4)
    >>> ref = dist.NegativeBinomial(total_count=theta.expand(3, 4, 2), logits=t).log_prob(k)
    >>> bool(torch.allclose(NegativeBinomialCounts(theta, t).log_prob(k), ref, atol=1e-5))
    True
    """

    def __init__(self, dispersion, logits, validate_args=None):
        self.dispersion = dispersion
        super().__init__(total_count=dispersion.expand_as(logits), logits=logits,
                         validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return NegativeBinomialCounts(self.dispersion, self.logits.expand(torch.Size(batch_shape)))

    def log_prob(self, value):
        r, t = self.dispersion, self.logits
        log_norm = torch.lgamma(value + r) - torch.lgamma(value + 1) - torch.lgamma(r)
        return log_norm + (r + value) * F.logsigmoid(-t) + value * t


def count_distribution(likelihood: str, mean=None, dispersion=None, gate_logits=None,
                       log_mean=None):
    """Counts distribution with event shape (genes,).

    Give the expected counts as ``mean`` or, cheaper and more exact for the
    negative binomial, as ``log_mean``. ``dispersion`` is the NB
    inverse-overdispersion θ (variance = μ + μ²/θ).
    """
    if likelihood == "poisson":
        d = dist.Poisson(mean.clamp(min=1e-8) if mean is not None else log_mean.exp())
    else:
        if log_mean is None:
            log_mean = mean.clamp(min=1e-8).log()
        logits = log_mean - dispersion.log()
        if likelihood == "nb":
            d = NegativeBinomialCounts(dispersion, logits)
        elif likelihood == "zinb":
            d = dist.ZeroInflatedNegativeBinomial(
                total_count=dispersion.expand_as(logits), logits=logits,
                gate_logits=gate_logits.expand_as(logits))
        else:
            raise ValueError(f"unknown likelihood {likelihood!r}")
    return d.to_event(1)
