"""Priors of the global sites, swappable by name, distribution or factory.

A prior spec is one of:

- a name: ``"normal"``, ``"laplace"``, ``"student-t"`` (scale given apart), or
  the same with ``"-learnt-scale"`` (for ``effect``: the scale is a model
  parameter fitted by maximising the ELBO, type-II maximum likelihood; it is
  saved with the run like every other parameter);
- a Pyro distribution with scalar (or broadcastable) batch shape, expanded to
  the site's shape;
- a callable ``shape -> distribution`` whose batch shape ends in ``shape``;
  it may sample hyper-parameters itself (:func:`sampled_scale`: a
  hierarchical prior whose scale is a sample site). It is called outside the
  site's plate, so a hyper-parameter is one value per particle; the guide
  must then sample that site too (the objective checks on its first step and
  names it), e.g. ``CombinedGuide(CorrelatedGuide(model),
  AutoNormal(poutine.block(model, expose=["effect_scale_hyper"])))``.

Example
-------
>>> import pyro.distributions as dist
>>> prior_distribution("laplace", (3, 2), scale=0.5).batch_shape
torch.Size([3, 2])
>>> prior_distribution(dist.StudentT(3.0, 0.0, 1.0), (3, 2)).batch_shape
torch.Size([3, 2])
"""

from __future__ import annotations

import pyro
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
        # leading dims are allowed: a sampled hyper-parameter carries the particle dim
        if tuple(d.batch_shape)[len(d.batch_shape) - len(shape):] != tuple(shape):
            raise CradleInputError(
                f"prior factory returned batch shape {tuple(d.batch_shape)}, expected one "
                f"ending in {tuple(shape)}")
        return d
    raise CradleInputError(f"a prior must be a name, a distribution or a callable, got {spec!r}")


def sampled_scale(name: str = "effect_scale_hyper", hyper_prior=None, family: str = "normal"):
    """A hierarchical prior factory: ``scale ~ hyper_prior`` (a sample site), then
    ``family(0, scale)`` for every element of the site.

    The scale is one draw per particle, shared by all perturbations and latent
    dimensions: the model learns how large effects are from the data, with
    uncertainty. Give the guide a factor for ``name``.

    Example
    -------
    >>> from pyro import poutine
    >>> prior = sampled_scale("tau", dist.HalfNormal(1.0))
    >>> tr = poutine.trace(lambda: prior((3, 2))).get_trace()
    >>> tuple(tr.nodes["_RETURN"]["value"].batch_shape), "tau" in tr.nodes
    ((3, 2), True)
    """
    hyper_prior = hyper_prior if hyper_prior is not None else dist.HalfNormal(1.0)
    if family not in _NAMED:
        raise CradleInputError(f"family={family!r}; choose one of {sorted(_NAMED)}")

    def factory(shape):
        scale = pyro.sample(name, hyper_prior)   # () or, under vectorised particles, (S, 1)
        scale = scale.reshape(scale.shape + (1,) * (len(shape) - 1))
        d = _NAMED[family](torch.zeros_like(scale), scale)
        return d.expand(torch.broadcast_shapes(scale.shape, tuple(shape)))

    return factory
