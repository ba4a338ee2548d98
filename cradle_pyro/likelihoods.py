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


def count_distribution(likelihood: str, mean, dispersion=None, gate_logits=None):
    """Counts distribution with event shape (genes,).

    ``dispersion`` is the NB inverse-overdispersion θ (variance = μ + μ²/θ).
    """
    mean = mean.clamp(min=1e-8)
    if likelihood == "poisson":
        d = dist.Poisson(mean)
    else:
        logits = mean.log() - dispersion.log()
        if likelihood == "nb":
            d = dist.NegativeBinomial(total_count=dispersion.expand_as(mean), logits=logits)
        elif likelihood == "zinb":
            d = dist.ZeroInflatedNegativeBinomial(
                total_count=dispersion.expand_as(mean), logits=logits,
                gate_logits=gate_logits.expand_as(mean))
        else:
            raise ValueError(f"unknown likelihood {likelihood!r}")
    return d.to_event(1)
