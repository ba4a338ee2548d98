"""Interventions through ``pyro.poutine.do``, with friendly values.

:func:`intervene` returns the model under ``do`` for ``artifact`` and/or
``dosage``. Values may be friendly: ``artifact="clean"`` (all kinds 0),
``"artifact"`` (all 1), an artifact kind's name; ``dosage="A+B"`` or a target
name or ``"control"``; or tensors.

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
import torch
from pyro import poutine

from cradle_pyro.errors import CradleInputError
from cradle_pyro.model import _batch_size
from cradle_pyro.splits import targets_of

INTERVENABLE = ("dosage", "artifact")


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
              artifact_names=None, control_label="control", separator="+"):
    """The model under ``do(dosage=..., artifact=...)``, with Pyro's ``__CF`` renaming hidden.

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

    Returns
    -------
    callable
        Same signature as ``model``.
    """
    P, A = model.n_perturbations, model.n_artifacts
    fixed = {}
    if dosage is not None:
        fixed["dosage"] = dosage_value(dosage, perturbation_names or [f"P{i}" for i in range(P)],
                                       control_label, separator)
        if fixed["dosage"].shape[-1] != P:
            raise CradleInputError(f"dosage has {fixed['dosage'].shape[-1]} columns; the model has {P} targets")
    if artifact is not None:
        fixed["artifact"] = artifact_value(artifact, A, artifact_names)
        if fixed["artifact"].shape[-1] != A:
            raise CradleInputError(f"artifact has {fixed['artifact'].shape[-1]} columns; the model has {A} kinds")
    device = model.device

    def intervened(*args, **kwargs):
        n = _batch_size(kwargs.get("counts"), kwargs.get("dosage"), kwargs.get("artifact"),
                        kwargs.get("library"), kwargs.get("n_cells"))
        values = {k: v.to(device).expand(n, v.shape[-1]) for k, v in fixed.items()}
        # observed values of intervened sites are replaced, not conditioned on
        kwargs = {k: (None if k in values else v) for k, v in kwargs.items()}
        return poutine.condition(poutine.do(model, data=values), data=values)(*args, **kwargs)

    return intervened
