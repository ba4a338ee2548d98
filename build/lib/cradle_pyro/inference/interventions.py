"""Interventions through ``pyro.poutine.do``, with friendly values.

:func:`intervene` returns the model under ``do`` for any of its sample sites
(:data:`INTERVENABLE`: ``dosage``, ``artifact``, ``basal``, ``library``,
``effect``, ``mask``, ``artifact_effect``, ``target_effect``, ``gene_effect``,
``library_effect``). Values may be
friendly: ``artifact="clean"`` (all kinds 0), ``"artifact"`` (all 1), an
artifact kind's name; ``dosage="A+B"`` or a target name or ``"control"``; or
tensors broadcastable to the site (per-cell sites: one value for every cell or
one per cell).

A **soft intervention** gives a Pyro distribution instead of a value: the
site keeps running but its mechanism is replaced (``basal=dist.Normal(2., 1.)``
draws every cell's basal state from N(2, 1) instead of the prior;
``dosage=dist.Bernoulli(0.3)`` assigns each target at random). The site is
then marked observed in traces (its value was set by the intervention), so an
outer ``poutine.replay`` of a guide trace does not overwrite it.

An intervention that cannot change anything downstream is refused: ``artifact``
on a model without a path from artifact to counts (``sams``, ``cpa``,
``svae+``), or a global site the model does not have.

**About Pyro's** ``do``: it cuts the intervened site from its causes. The
value that flows downstream is the intervention, recorded under the mangled
name ``<name>__CF`` (and stopped there, so outer handlers such as a trace do
not see it), while a fresh copy of the original site is still sampled under
``<name>``: a plain trace of ``do(model)`` shows ``artifact`` with a value the
cell never used. :func:`intervene` conditions that fresh copy on the
intervention value (``poutine.condition`` outside ``poutine.do``), so traces of
the intervened model show ``artifact`` with the intervened value, nothing named
``artifact__CF``, and the copy consumes no random numbers.

The intervened model is a plain Pyro callable: it composes with
``poutine.condition``, ``poutine.trace`` and ``pyro.infer.Predictive``.

Example
-------
>>> import torch
>>> from pyro import poutine
>>> from cradle_pyro.model import CradleModel
>>> model = CradleModel(n_genes=20, n_perturbations=2, n_artifacts=1)
>>> clean = intervene(model, artifact="clean")
>>> tr = poutine.trace(clean).get_trace(n_cells=4)
>>> tr.nodes["artifact"]["value"].sum().item(), "artifact__CF" in tr.nodes
(0.0, False)
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from cradle_pyro.errors import CradleInputError
from cradle_pyro.model import _batch_size
from cradle_pyro.splits import targets_of

INTERVENABLE = ("dosage", "artifact", "basal", "library", "effect", "mask", "artifact_effect",
                "target_effect", "gene_effect", "library_effect")
PER_CELL = ("dosage", "artifact", "basal", "library")


def artifact_value(value, n_artifacts: int, artifact_names=None) -> torch.Tensor:
    """An artifact vector (A,) or matrix (n, A) from a friendly value."""
    if isinstance(value, str):
        if value == "clean":
            return torch.zeros(n_artifacts)
        if value == "artifact":
            return torch.ones(n_artifacts)
        names = list(artifact_names or [])
        if value in names:
            vec = torch.zeros(n_artifacts)
            vec[names.index(value)] = 1.0
            return vec
        raise CradleInputError(
            f"artifact={value!r}: use 'clean', 'artifact', a kind among {names}, or a tensor")
    return torch.as_tensor(value, dtype=torch.float32)


def dosage_value(value, perturbation_names, control_label="control", separator="+") -> torch.Tensor:
    """A dosage vector (P,) or matrix (n, P) from a condition label or tensor."""
    if isinstance(value, str):
        vec = torch.zeros(len(perturbation_names))
        for t in targets_of(value, control_label, separator):
            if t not in perturbation_names:
                raise CradleInputError(
                    f"dosage={value!r}: target {t!r} is unknown; known targets: "
                    f"{list(perturbation_names)[:12]}")
            vec[list(perturbation_names).index(t)] = 1.0
        return vec
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)


def intervene(model, *, dosage=None, artifact=None, perturbation_names=None,
              artifact_names=None, control_label="control", separator="+", **sites):
    """The model under ``do(...)`` on any site, with Pyro's ``__CF`` renaming hidden.

    Parameters
    ----------
    model
        A :class:`~cradle_pyro.model.CradleModel` (or any callable with its
        signature and sites).
    dosage, artifact
        Intervention values (see module docstring); ``None`` leaves a site alone.
    perturbation_names, artifact_names
        Needed for names; default to ``P0…`` style names of the model's size
        when absent (tensors need none).
    **sites
        Any other site of :data:`INTERVENABLE`: a tensor (hard intervention)
        or a Pyro distribution (soft intervention).

    Returns
    -------
    callable
        Same signature as ``model``.

    Example
    -------
    >>> import torch, pyro.distributions as dist
    >>> from pyro import poutine
    >>> from cradle_pyro.model import CradleModel
    >>> model = CradleModel(n_genes=20, n_perturbations=2, n_artifacts=1)
    >>> tr = poutine.trace(intervene(model, basal=torch.zeros(10))).get_trace(n_cells=3)
    >>> tr.nodes["basal"]["value"].abs().sum().item()
    0.0
    >>> soft = intervene(model, basal=dist.Normal(5.0, 0.1))
    >>> poutine.trace(soft).get_trace(n_cells=3).nodes["basal"]["value"].mean().round().item()
    5.0
    """
    P, A = model.n_perturbations, model.n_artifacts
    unknown = sorted(set(sites) - set(INTERVENABLE))
    if unknown:
        raise CradleInputError(f"cannot intervene on {unknown}: intervenable sites are "
                               f"{list(INTERVENABLE)}")
    config = getattr(model, "config", None)
    if config is not None and config.latent_artifacts:  # the site holds the latent causes
        artifact_names = list(config.artifact_causes)
    if artifact is not None and config is not None and not config.artifact_to_decoder:
        raise CradleInputError(
            f"model {config.model!r} has no path from artifact to counts: do(artifact=...) "
            "would return the factual answer unchanged; use model='cradle'")
    # friendly values of the per-cell treatment sites: parser, width, what a column is
    friendly = {
        "dosage": (lambda v: dosage_value(v, _target_names(model, perturbation_names),
                                          control_label, separator), P, "targets"),
        "artifact": (lambda v: artifact_value(v, A, artifact_names), A, "kinds"),
    }
    fixed, soft = {}, {}
    for name, value in {"dosage": dosage, "artifact": artifact, **sites}.items():
        if value is None:
            continue
        if isinstance(value, dist.Distribution):
            soft[name] = value
        elif name in friendly:
            parse, width, what = friendly[name]
            fixed[name] = parse(value)
            if fixed[name].shape[-1] != width:
                raise CradleInputError(
                    f"{name} has {fixed[name].shape[-1]} columns; the model has {width} {what}")
        else:
            fixed[name] = torch.as_tensor(value, dtype=torch.float32)
    device = model.device

    def intervened(*args, **kwargs):
        n = _batch_size(kwargs.get("counts"), kwargs.get("dosage"), kwargs.get("artifact"),
                        kwargs.get("library"), kwargs.get("n_cells"))
        values = {k: _per_cell(k, v.to(device), n) for k, v in fixed.items()}
        # observed values of intervened sites are replaced, not conditioned on
        kwargs = {k: (None if k in values or k in soft else v) for k, v in kwargs.items()}
        with SoftIntervention(soft, model):
            return poutine.condition(poutine.do(model, data=values), data=values)(*args, **kwargs)

    return intervened


def counterfactual_library(model, guide_trace, library, factual_dosage, dosage, names=None):
    """Libraries observed under ``factual_dosage``, moved to the intervention ``do(dosage)``.

    Where the model has a ``library_effect`` site (``ModelConfig.library_effects``:
    the library is a mediator of the dosage), each cell keeps its own noise
    and takes the intervention's shift, under the draw of ``library_effect`` in
    ``guide_trace`` (:meth:`~cradle_pyro.model.CradleModel.counterfactual_library`).
    Otherwise, or without a dosage intervention, ``library`` is returned as is.

    >>> import torch
    >>> from pyro import poutine
    >>> from cradle_pyro.config import ModelConfig
    >>> from cradle_pyro.guides import make_guide
    >>> from cradle_pyro.model import CradleModel
    >>> model = CradleModel(5, 2, 1, ModelConfig(library_effects=True))
    >>> tr = poutine.trace(make_guide("correlated", model)).get_trace(n_cells=1)
    >>> lib = counterfactual_library(model, tr, torch.tensor([100.]), torch.zeros(1, 2), "P0")
    >>> torch.allclose(lib, 100 * tr.nodes["library_effect"]["value"][0].exp())
    True
    """
    if dosage is None or library is None or "library_effect" not in guide_trace.nodes:
        return library
    names = names or {}
    new = dosage_value(dosage, _target_names(model, names.get("perturbation_names")),
                       names.get("control_label", "control"), names.get("separator", "+"))
    library = torch.as_tensor(library, dtype=torch.float32, device=model.device)
    factual = torch.as_tensor(factual_dosage, dtype=torch.float32, device=model.device)
    return model.counterfactual_library(library, factual, new.to(library),
                                        guide_trace.nodes["library_effect"]["value"])


def _target_names(model, perturbation_names=None) -> list:
    """The given target names, or ``P0…`` style names of the model's size."""
    return list(perturbation_names or [f"P{i}" for i in range(model.n_perturbations)])


def _per_cell(name, value, n):
    """Per-cell sites get one row per cell; globals are used as given."""
    if name not in PER_CELL:
        return value
    if name == "library":
        return value.expand(n) if value.dim() <= 1 and value.numel() in (1, n) else value
    return value.expand(n, value.shape[-1])


class SoftIntervention(Messenger):
    """Replace the mechanism (distribution) of named sites; the value is drawn from it.

    The new distribution is broadcast to the site's batch and event shape; the
    site is marked observed so that an outer ``poutine.replay`` keeps the drawn
    value.
    """

    def __init__(self, mechanisms: dict, model=None):
        super().__init__()
        self.mechanisms = mechanisms
        self.device = getattr(model, "device", None)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["name"] not in self.mechanisms:
            return
        old = msg["fn"]
        new = self.mechanisms[msg["name"]]
        shape = old.batch_shape + old.event_shape
        if new.event_dim == 0:
            new = new.expand(shape).to_event(old.event_dim)
        value = new.sample()
        if self.device is not None:
            value = value.to(self.device)
        msg["fn"], msg["value"], msg["is_observed"] = new, value, True
