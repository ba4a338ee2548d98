"""Random numbers: seeded answers without touching the caller's random state.

The query functions (effects, counterfactuals, embeddings, diagnostics) take a
``seed`` so the same call gives the same numbers; :func:`keeps_global_rng`
makes them restore the torch, NumPy, Python (and CUDA) generators afterwards,
so seeding an answer never changes the random stream of the caller's own code.
Only :func:`cradle_pyro.inference.train.fit` seeds the global generators, as documented.

Example
-------
>>> import torch
>>> @keeps_global_rng
... def draw(seed):
...     torch.manual_seed(seed)
...     return torch.rand(1)
>>> torch.manual_seed(1); before = torch.rand(1); torch.manual_seed(1)
<torch._C.Generator object at ...>
>>> _ = draw(7); bool(torch.rand(1) == before)
True
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch


def _rng_state() -> dict:
    """RNG states as tensors and plain lists, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.as_tensor(keys.astype(np.int64)), pos, has_gauss, cached],
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


class _rng_kept:
    """Restore every RNG fit uses (torch, numpy, python) on exit."""

    def __enter__(self):
        self._state = _rng_state()

    def __exit__(self, *exc):
        _set_rng_state(self._state)


def keeps_global_rng(fn):
    """Decorator: the global random state after the call is the one before it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _rng_kept():
            return fn(*args, **kwargs)

    return wrapper


__all__ = ["keeps_global_rng"]
