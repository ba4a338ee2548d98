"""Counterfactual worlds with ChiRho, for researchers who already use it.

ChiRho (``pip install "cradle-pyro[chirho]"``) is where Pyro's causal users
live: ``do``, ``TwinWorldCounterfactual``/``MultiWorldCounterfactual`` and
``condition`` act on any Pyro model, and :class:`~cradle_pyro.model.CradleModel`
is one. Under a world handler each site downstream of an intervention gains a
world dimension (index 0 the factual world, 1 the counterfactual one) and the
exogenous sites (``basal``, the globals) are shared by both worlds, which is
abduction done by the handler.

:func:`twin_world_means` abducts the exogenous state from the guide (one draw
of ``q(basal | x)`` and the globals, replayed into the model), intervenes with
ChiRho's ``do`` under ``TwinWorldCounterfactual`` and returns the expected
counts of both worlds. For ``artifact`` it gives exactly what
:func:`cradle_pyro.inference.counterfactuals.counterfactual` gives from the
same guide draw (``layers["factual_expected"]``, ``layers["expected"]``): the
test suite checks it. The library's own query functions add what ChiRho leaves
to the user: friendly values (``"clean"``, ``"A+B"``), the library as a
mediator under a dosage intervention, shared count noise, intervals.

Example
-------
>>> import torch
>>> from pyro import poutine
>>> from cradle_pyro.model import CradleModel
>>> from cradle_pyro.guides import make_guide
>>> model = CradleModel(n_genes=20, n_perturbations=2, n_artifacts=1)
>>> counts = torch.poisson(torch.full((4, 20), 3.0))
>>> kwargs = dict(counts=counts, dosage=torch.zeros(4, 2), artifact=torch.ones(4, 1),
...               library=counts.sum(-1))
>>> guide = make_guide("correlated", model, counts.mean(0).numpy(), counts.std(0).numpy() + 1)
>>> guide_trace = poutine.trace(guide).get_trace(**kwargs)
>>> factual, clean = twin_world_means(model, guide_trace, kwargs, {"artifact": torch.zeros(4, 1)})
>>> factual.shape, clean.shape
(torch.Size([4, 20]), torch.Size([4, 20]))
"""

from __future__ import annotations

import torch
from pyro import poutine

PREDICTED = {"counts": None, "cell_index": None, "num_cells": None, "reference": None}


def twin_world_means(model, guide_trace, kwargs: dict, actions: dict):
    """Expected counts (factual, counterfactual) under ChiRho's twin worlds.

    Parameters
    ----------
    model
        A :class:`~cradle_pyro.model.CradleModel` (any Pyro model with a ``counts`` site).
    guide_trace
        A trace of the guide on the same cells: the abducted exogenous state.
    kwargs
        The model's keyword arguments for the cells (``dosage``, ``artifact``,
        ``library``, ...); the counts are predicted, not observed.
    actions
        ChiRho's ``do`` actions: site name → value (a tensor broadcastable to
        the site), e.g. ``{"artifact": torch.zeros(n, A)}``.
    """
    from chirho.counterfactual.handlers import TwinWorldCounterfactual
    from chirho.indexed.ops import IndexSet, gather, indices_of
    from chirho.interventional.handlers import do

    with torch.no_grad(), TwinWorldCounterfactual():
        trace = poutine.trace(poutine.replay(do(actions=actions)(model), trace=guide_trace)
                              ).get_trace(**dict(kwargs, **PREDICTED))
        mean = trace.nodes["counts"]["fn"].mean
        # the twin-world dimension's name is ChiRho's own: read it, don't assume it
        names = list(indices_of(mean, event_dim=1))
        worlds = [gather(mean, IndexSet(**{n: {w} for n in names}), event_dim=1)
                  for w in (0, 1)]
    shape = trace.nodes["counts"]["value"].shape[-2:]
    return tuple(w.reshape(shape) for w in worlds)


__all__ = ["twin_world_means"]
