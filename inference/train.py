"""Training by stochastic variational inference.

:func:`fit` minimises :class:`~inference.objective.CradleELBO` over
minibatches of the training cells with AdamW (weight decay) and gradient-norm
clipping, keeps the state with the best validation loss (early stopping with
patience), shows ELBO terms on a tqdm bar, and writes an atomic checkpoint
after every epoch from which ``fit(..., resume=True)`` continues the same run.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> data = PerturbationData.from_anndata(simulate_screen(300, 60, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=2, batch_size=128, progress=False))
>>> list(run.history.columns)[:3]
['epoch', 'loss', 'elbo']
"""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from cradle_pyro.config import ModelConfig
from cradle_pyro.data import PerturbationData
from cradle_pyro.errors import CradleInputError
from cradle_pyro.guides import make_guide
from cradle_pyro.model import CradleModel

from .objective import CradleELBO
from .selection import SELECT, ValidationEffects

# which history column each selection criterion minimises
SELECTION_COLUMN = {"elbo": "val_loss", "ate": "val_ate_error"}

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How to train. Every field can be set from the command line or YAML.

    ``select`` picks the state ``fit`` keeps: ``"elbo"`` (lowest validation
    −ELBO), ``"ate"`` (lowest validation ATE error on seen conditions, see
    :mod:`inference.selection`) or ``"last"`` (the final epoch, no early
    stopping). Nothing is kept and patience does not count before ``warmup``
    epochs. ``independence`` weighs the basal-leakage penalty of
    :meth:`~inference.objective.CradleELBO.basal_leakage`.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 1e-5
    clip_norm: float = 10.0
    patience: int = 15
    select: str = "elbo"
    warmup: int = 0
    num_particles: int = 5
    beta: float = 1.0
    independence: float = 0.0
    alignment_weighting: str = "per-cell"
    class_balance: float | None = None
    guide: str = "correlated"
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainedRun:
    """A trained model and guide with their configuration and loss history."""

    model: CradleModel
    guide: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    history: pd.DataFrame
    best_epoch: int
    data: PerturbationData | None = field(default=None, repr=False)
    data_source: dict | None = None  # the AnnData file and arguments the data came from


def _resolve_device(device: str) -> torch.device:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CradleInputError("device='cuda' but no CUDA GPU is visible; use device='cpu'")
    return torch.device(device)


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
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _rng_kept:
    """Restore every RNG fit uses (torch, numpy, python) on exit."""

    def __enter__(self):
        self._state = _rng_state()

    def __exit__(self, *exc):
        _set_rng_state(self._state)


def atomic_save(obj, path: Path):
    """torch.save to a temporary file, then rename: a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _distributed():
    """(rank, world size) when torch.distributed is initialised (e.g. under torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(params, world):
    """Data-parallel SVI: average the ranks' gradient estimates of the same objective."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def _mean_over_ranks(value: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def _parameters(model, guide):
    seen, params = set(), []
    for p in list(model.parameters()) + list(guide.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def evaluate_loss(objective, model, guide, data, split, batch_size, device) -> dict:
    """Mean per-cell objective terms over a split (no gradients)."""
    totals, n = {}, 0
    with torch.no_grad():
        for batch in data.batches(split, batch_size=batch_size, shuffle=False, device=device):
            objective(model, guide, **batch.model_kwargs())
            for k, v in objective.last_terms.items():
                totals[k] = totals.get(k, 0.0) + v * batch.size
            n += batch.size
    num = len(data.indices(split))
    return {k: v / n / num for k, v in totals.items()}


def fit(
    data: PerturbationData,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    *,
    model: CradleModel | None = None,
    guide=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainedRun:
    """Train a model and guide on ``data``'s training cells.

    Parameters
    ----------
    data
        The screen; ``train`` cells are fitted, ``val`` cells drive early stopping.
    train_config, model_config
        :class:`TrainConfig` and :class:`~cradle_pyro.config.ModelConfig`.
    model, guide
        Bring your own (any Pyro guide with the model's signature, e.g. an
        ``AutoGuideList``); by default built from the configs.
    checkpoint_dir
        Where ``checkpoint.pt`` is written after every epoch.
    resume
        Continue from ``checkpoint_dir/checkpoint.pt`` (same data and configs).

    Returns
    -------
    TrainedRun
        With the best-validation state restored and the loss history
        (per-cell terms: ``loss``, ``elbo``, ``loglik``, ``kl``, ``alignment``,
        ``val_loss`` = validation −ELBO, which early stopping watches, and
        ``val_alignment``).
    """
    tc = train_config or TrainConfig()
    mc = model_config or (model.config if model is not None else ModelConfig())
    device = _resolve_device(tc.device)
    pyro.set_rng_seed(tc.seed)
    model = model or CradleModel.from_data(data, mc)
    guide = guide or make_guide(tc.guide, model, data.gene_mean, data.gene_std)
    model.to(device)
    guide.to(device)
    objective = CradleELBO(tc.num_particles, tc.beta, tc.class_balance, tc.independence,
                           tc.alignment_weighting).for_data(data, "train")
    has_val = len(data.indices("val")) > 0
    val_objective = CradleELBO(tc.num_particles, tc.beta, tc.class_balance, tc.independence,
                           tc.alignment_weighting).for_data(
        data, "val" if has_val else "train")
    # one forward pass creates lazily built parameters (autoguides) before the optimiser
    with torch.no_grad():
        objective(model, guide, **next(data.batches("train", tc.batch_size, device=device))
                  .model_kwargs())
    optimizer = torch.optim.AdamW(_parameters(model, guide), lr=tc.lr, weight_decay=tc.weight_decay)
    rank, world = _distributed()
    if world > 1:
        # same initial parameters everywhere (seeded above); different noise per rank
        pyro.set_rng_seed(tc.seed + 7919 * rank)

    if tc.select not in SELECT:
        raise CradleInputError(f"select={tc.select!r}; choose one of {list(SELECT)}")
    val_effects = ValidationEffects(data, seed=tc.seed) if tc.select == "ate" else None
    if tc.select == "ate" and not val_effects:
        raise CradleInputError("select='ate' needs validation cells of seen conditions "
                               "(at least 3 clean cells of a condition in the 'val' split); "
                               "use select='elbo' or a split with validation cells")
    start, history, best, best_epoch, best_state, stale = 0, [], math.inf, -1, None, 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise CradleInputError(f"resume=True but no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        guide.load_state_dict(ck["guide"])
        optimizer.load_state_dict(ck["optimizer"])
        _set_rng_state(ck["rng"])
        start, history, best, best_epoch, stale = (ck["epoch"] + 1, ck["history"], ck["best"],
                                                   ck["best_epoch"], ck["stale"])
        best_state = ck["best_state"]
    if ckpt_path is not None and rank == 0:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    bar = tqdm(range(start, tc.epochs), desc=f"train {mc.model}", disable=not tc.progress or rank > 0,
               initial=start, total=tc.epochs)
    n_train = len(data.indices("train"))
    for epoch in bar:
        model.train()
        guide.train()
        totals = {}
        for batch in data.batches("train", tc.batch_size, seed=tc.seed * 100003 + epoch,
                                  device=device, shard=(rank, world)):
            optimizer.zero_grad()
            loss = objective(model, guide, **batch.model_kwargs())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}: {objective.last_terms}")
            loss.backward()
            if world > 1:
                _average_gradients(_parameters(model, guide), world)
            torch.nn.utils.clip_grad_norm_(_parameters(model, guide), tc.clip_norm)
            optimizer.step()
            for k, v in objective.last_terms.items():
                totals[k] = totals.get(k, 0.0) + v * batch.size * world / n_train
        row = {"epoch": epoch, **{k: v / n_train for k, v in totals.items()}}
        model.eval()
        guide.eval()
        val = evaluate_loss(val_objective, model, guide, data, "val" if has_val else "train",
                            tc.batch_size, device)
        # early stopping watches the fit (-ELBO), not the alignment regulariser,
        # whose held-out value rests on a handful of reference cells per group
        row["val_loss"] = -val["elbo"]
        row["val_alignment"] = val["alignment"]
        if world > 1:  # one early-stopping decision for all ranks
            row["val_loss"] = _mean_over_ranks(row["val_loss"], device)
        if val_effects:
            with _rng_kept():  # scoring must not change the training's random stream
                row["val_ate_error"] = val_effects.error(model, guide)
        history.append(row)
        score = row[SELECTION_COLUMN[tc.select]] if tc.select != "last" else -epoch
        if epoch < tc.warmup:
            score = math.inf  # nothing is kept, and patience does not run, before warm-up ends
        if score < best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {"model": copy.deepcopy(model.state_dict()),
                          "guide": copy.deepcopy(guide.state_dict())}
        elif epoch >= tc.warmup:
            stale += 1
        bar.set_postfix(loss=f"{row['loss']:.1f}", loglik=f"{row['loglik']:.1f}",
                        kl=f"{row['kl']:.2f}", align=f"{row['alignment']:.3f}",
                        val=f"{row['val_loss']:.1f}")
        if ckpt_path is not None and rank == 0:
            atomic_save({"model": model.state_dict(), "guide": guide.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                         "epoch": epoch, "history": history, "best": best,
                         "best_epoch": best_epoch, "stale": stale, "best_state": best_state},
                        ckpt_path)
        if stale >= tc.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state["model"])
        guide.load_state_dict(best_state["guide"])
    model.eval()
    guide.eval()
    return TrainedRun(model, guide, mc, tc, pd.DataFrame(history), best_epoch, data)
