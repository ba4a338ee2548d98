"""A straight-through Bernoulli whose ``log_prob`` is the Bernoulli pmf.

Pyro's ``RelaxedBernoulliStraightThrough`` scores the relaxed (continuous)
density; pairing that with a Bernoulli prior mixes a density with a pmf. Here
the sample is a hard 0/1 value with Gumbel-softmax (binary concrete)
gradients, and ``log_prob`` is the Bernoulli pmf of that hard value, as in
the CRADLE and SAMS-VAE mask guides.

Example
-------
>>> import torch
>>> d = BernoulliStraightThrough(torch.zeros(4), temperature=0.5)
>>> x = d.rsample()
>>> bool(((x == 0) | (x == 1)).all()), tuple(d.log_prob(x).shape)
(True, (4,))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import constraints


class BernoulliStraightThrough(TorchDistribution):
    """Hard Bernoulli samples with straight-through binary-concrete gradients."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True

    def __init__(self, logits, temperature: float = 0.5, validate_args=None):
        self.logits = logits
        self.temperature = temperature
        super().__init__(batch_shape=logits.shape, validate_args=False)

    @property
    def probs(self):
        return torch.sigmoid(self.logits)

    @property
    def mean(self):
        return self.probs

    def expand(self, batch_shape, _instance=None):
        return BernoulliStraightThrough(self.logits.expand(batch_shape), self.temperature)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        u = u.clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((self.logits + u.log() - (-u).log1p()) / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        # soft - soft.detach() is exactly 0, so the value is exactly 0/1,
        # while the gradient is that of the relaxed sample
        return hard + (soft - soft.detach())

    def log_prob(self, value):
        logits = self.logits.expand(torch.broadcast_shapes(self.logits.shape, value.shape))
        return -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none")

    def entropy(self):
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")


def bernoulli_pmf(probs):
    """A Bernoulli prior that scores straight-through values (0/1 up to rounding)."""
    from pyro.distributions import Bernoulli

    return Bernoulli(probs=probs, validate_args=False)
