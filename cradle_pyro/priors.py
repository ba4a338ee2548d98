"""Priors of the global sites, swappable by name, distribution or factory.

A prior spec is one of:

- a name: ``"normal"``, ``"laplace"``, ``"student-t"`` (scale given apart), or
  the same with ``"-learnt-scale"`` (for ``effect``: the scale is a model
  parameter fitted by maximising the ELBO, type-II maximum likelihood; it is
  saved with the run like every other parameter);
- a Pyro distribution with scalar (or broadcastable) batch shape, expanded to
  the site's shape;
- a callable ``shape -> distribution`` whose batch shape is ``shape``.

Example
-------
>>> import pyro.distributions as dist
>>> prior_distribution("laplace", (3, 2), scale=0.5).batch_shape
torch.Size([3, 2])
>>> prior_distribution(dist.StudentT(3.0, 0.0, 1.0), (3, 2)).batch_shape
torch.Size([3, 2])
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from .errors import CradleInputError

_NAMED = {
    "normal": lambda loc, scale: dist.Normal(loc, scale),
    "laplace": lambda loc, scale: dist.Laplace(loc, scale),
    "student-t": lambda loc, scale: dist.StudentT(3.0, loc, scale),
}


LEARNT = "-learnt-scale"


def prior_names() -> list:
    """Every named prior, learnt-scale variants included."""
    return sorted(_NAMED) + sorted(n + LEARNT for n in _NAMED)


def base_name(spec: str) -> str:
    """``"laplace-learnt-scale"`` → ``"laplace"``."""
    return spec[: -len(LEARNT)] if spec.endswith(LEARNT) else spec


def prior_distribution(spec, shape, scale=1.0, device=None):
    """A distribution of batch shape ``shape`` from a prior spec."""
    zero = torch.zeros((), device=device)
    if isinstance(spec, str):
        name = base_name(spec)
        if name not in _NAMED:
            raise CradleInputError(f"unknown prior {spec!r}; choose one of {prior_names()}")
        return _NAMED[name](zero, zero + scale).expand(shape)
    if isinstance(spec, dist.Distribution):
        return spec.expand(shape)
    if callable(spec):
        d = spec(tuple(shape))
        if tuple(d.batch_shape) != tuple(shape):
            raise CradleInputError(
                f"prior factory returned batch shape {tuple(d.batch_shape)}, expected {tuple(shape)}")
        return d
    raise CradleInputError(f"a prior must be a name, a distribution or a callable, got {spec!r}")
