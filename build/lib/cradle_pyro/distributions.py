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

import numpy as np
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


class BinaryStates(TorchDistribution):
    """A distribution over 0/1 vectors of length K given the log-probabilities of all 2^K states.

    ``logits`` (…, 2^K) are normalised over the last dimension; state ``s``
    is the vector of its K binary digits (:func:`binary_states`). Its event
    dimension is 1, like a ``Bernoulli(...).to_event(1)`` prior over the
    same vectors, so it can serve as their exact (non-factorised) posterior.

    Example
    -------
    >>> import torch
    >>> d = BinaryStates(torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])))
    >>> [round(p, 2) for p in d.marginals().tolist()]
    [0.2, 0.2]
    >>> round(float(d.log_prob(torch.tensor([0., 0.])).exp()), 2)
    0.7
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits, validate_args=None):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        n_states = logits.shape[-1]
        self.n_bits = max(1, int(round(np.log2(n_states))))
        if 2 ** self.n_bits != n_states:
            raise ValueError(f"BinaryStates needs 2^K states, got {n_states}")
        self.states = binary_states(self.n_bits, logits.device, logits.dtype)
        super().__init__(batch_shape=logits.shape[:-1], event_shape=(self.n_bits,),
                         validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return BinaryStates(self.logits.expand(tuple(batch_shape) + self.logits.shape[-1:]))

    def sample(self, sample_shape=torch.Size()):
        index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        return self.states[index]

    def log_prob(self, value):
        powers = 2 ** torch.arange(self.n_bits - 1, -1, -1, device=value.device)
        index = (value.round().long() * powers).sum(-1)
        logits = self.logits.expand(index.shape + self.logits.shape[-1:])
        return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def marginals(self):
        """P(bit k = 1) for each k, (…, K)."""
        return torch.matmul(self.logits.exp(), self.states)


def binary_states(n_bits: int, device=None, dtype=torch.float32):
    """All 2^K binary vectors, (2^K, K), most significant bit first."""
    index = torch.arange(2 ** n_bits, device=device)
    powers = 2 ** torch.arange(n_bits - 1, -1, -1, device=device)
    return ((index.unsqueeze(-1) // powers) % 2).to(dtype)
