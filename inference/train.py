"""Training by stochastic variational inference.

:func:`fit` minimises :class:`~cradle_pyro.inference.objective.CradleELBO` over
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
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import pyro
import torch

from cradle_pyro.config import ModelConfig
from cradle_pyro.data import PerturbationData
from cradle_pyro.errors import CradleInputError, TrainingDiverged
from cradle_pyro.guides import make_guide
from cradle_pyro.model import CradleModel
from cradle_pyro.progress import Progress, format_seconds

from cradle_pyro.validation import check_choice, check_fields

from .objective import ALIGNMENT_WEIGHTINGS, CradleELBO
from .outputs import atomic_file
from .seeding import _rng_state, _set_rng_state
from .selection import SELECT, ValidationEffects

# which history column each selection criterion minimises
SELECTION_COLUMN = {"elbo": "val_loss", "ate": "val_ate_error"}

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How to train. Every field can be set from the command line or YAML.

    ``epochs`` (default 200): effects keep improving long after the ELBO has
    levelled. 200 against 100 lowered the cross-validated error on Norman's seen
    conditions on every seed (MSE −0.0005, −0.0002, −0.0010; r +0.016, +0.012,
    +0.017, ``benchmarks/results/cross_validation.json``) and the RMS error
    against the truth on simulated screens on all six (screen, seed) pairs
    (0.194 → 0.181, 0.197 → 0.179; ``training_length.json``). The intervals
    narrow as training converges (90 % coverage 0.81 → 0.77): the converged
    mean-field posterior is too narrow, not the training too short.

    ``select`` picks the state ``fit`` keeps: ``"elbo"`` (lowest validation
    −ELBO), ``"ate"`` (lowest validation ATE error on seen conditions, see
    :mod:`cradle_pyro.inference.selection`) or ``"last"`` (the final epoch, no early
    stopping). Nothing is kept and patience does not count before ``warmup``
    epochs. ``independence`` (λ, default 3) weighs the basal-leakage penalty of
    :meth:`~cradle_pyro.inference.objective.CradleELBO.basal_leakage`, the first-moment
    constraint that the basal state is independent of the treatment (each
    treatment group's mean of q(basal) over recent batches pulled to 0); λ = 3
    was chosen on simulated screens where the truth is known (ATE r 0.926 →
    0.967, 90 % coverage 0.64 → 0.83; λ = 1 is weaker; see
    ``benchmarks/gene_effects.py``) and kept on Norman, whose validation cells
    prefer it to λ = 10 on every seed (``benchmarks/basal_source.py``); 0
    trains the plain CRADLE objective.

    A numerical fault (a non-finite loss, term or gradient, an invalid
    distribution parameter, or an epoch loss :data:`EXPLOSION` times the best)
    is caught before the step applies it: the epoch's starting state is
    restored and, with ``on_divergence="lower-lr"``, the learning rate halved
    and the epoch rerun (at most ``max_lr_halvings`` times); with ``"stop"``, or
    beyond that, :class:`~cradle_pyro.errors.TrainingDiverged` is raised.

    ``class_balance``: ``None`` (default) leaves the likelihood unweighted; a
    share α gives artifact cells share α of its weight; ``"published"``
    weighs as the published code does, per batch and unnormalised (clean
    cells by the batch's artifact share s, artifact cells by 1 − s).
    ``guide_temperature`` is the straight-through mask's (published: 1.0).

    ``bootstrap``: train on a bootstrap replicate of the training cells (each
    condition's training cells drawn with replacement, seeded by ``seed``;
    :meth:`~cradle_pyro.data.PerturbationData.resample_training`); the run's ``data``
    stays the whole screen. Members of an ensemble trained so
    (:func:`~cradle_pyro.inference.ensembles.fit_ensemble`) mix into the bagged
    posterior.
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 1e-5
    clip_norm: float = 10.0
    patience: int = 15
    select: str = "last"
    warmup: int = 0
    on_divergence: str = "lower-lr"
    max_lr_halvings: int = 4
    num_particles: int = 5
    beta: float = 1.0
    independence: float = 3.0
    alignment_weighting: str = "per-cell"
    class_balance: float | str | None = None
    guide: str = "correlated"
    guide_temperature: float = 0.5
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    epochs_auto: bool = False
    bootstrap: bool = False

    def __post_init__(self):
        values = {k: v for k, v in vars(self).items() if not (k == "epochs" and v is None)
                  and not (k == "class_balance" and v == "published")}
        check_fields(values, _TRAIN_RULES, "TrainConfig")
        check_choice("guide", self.guide, ("correlated", "mean-field"), "TrainConfig")
        check_choice("select", self.select, SELECT, "TrainConfig")
        check_choice("on_divergence", self.on_divergence, ("lower-lr", "stop"), "TrainConfig")
        if self.epochs is not None and self.warmup >= self.epochs:
            raise CradleInputError(f"TrainConfig: warmup={self.warmup} must be less than "
                                   f"epochs={self.epochs}, or no state would be kept")
        check_choice("alignment_weighting", self.alignment_weighting, ALIGNMENT_WEIGHTINGS,
                     "TrainConfig")
        if not isinstance(self.device, str):
            raise CradleInputError(f"TrainConfig: device={self.device!r} must be a string like 'cpu'")

    def to_dict(self) -> dict:
        return asdict(self)

    def for_cells(self, n_train_cells: int) -> "TrainConfig":
        """This configuration with ``epochs`` chosen from the data when it was left at None."""
        if self.epochs is not None:
            return self
        return replace(self, epochs=epochs_for(n_train_cells), epochs_auto=True)


EPOCHS_MAX, EPOCHS_MIN, EPOCHS_FULL_CELLS = 200, 10, 20_000


def epochs_for(n_train_cells: int) -> int:
    """Epochs chosen from the number of training cells, when ``epochs`` is not given.

    200 epochs up to 20,000 training cells (the default chosen by cross-validation
    on Norman's seen cells and on simulated screens); beyond, the same number of
    cell visits (200 × 20,000) spread over the larger screen, and at least 10.

    >>> epochs_for(2_700), epochs_for(40_000), epochs_for(100_000), epochs_for(1_000_000)
    (200, 100, 40, 10)
    """
    per_cell = EPOCHS_MAX * EPOCHS_FULL_CELLS / max(int(n_train_cells), 1)
    return int(min(EPOCHS_MAX, max(EPOCHS_MIN, round(per_cell))))


_TRAIN_RULES = {
    "epochs": ("int", 1, None),
    "batch_size": ("int", 1, None),
    "lr": ("float", 0, None, {"low_open": True}),
    "weight_decay": ("float", 0, None),
    "clip_norm": ("float", 0, None, {"low_open": True}),
    "patience": ("int", 1, None),
    "warmup": ("int", 0, None),
    "max_lr_halvings": ("int", 0, None),
    "num_particles": ("int", 1, None),
    "beta": ("float", 0, None),
    "independence": ("float", 0, None),
    "guide_temperature": ("float", 0, None, {"low_open": True}),
    "class_balance": ("float", 0, 1, {"low_open": True, "high_open": True, "optional": True}),
    "seed": ("int", 0, None),
    "threads": ("int", 1, None, {"optional": True}),
    "progress": ("bool", None, None),
    "bootstrap": ("bool", None, None),
}


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


def load_tensors(path, device="cpu"):
    """``torch.load(weights_only=True)``, refusing anything but tensors in one clear line."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CradleInputError(f"{str(path)!r} is missing; the run folder is incomplete") from None
    except Exception as err:  # UnpicklingError, RuntimeError of a cut file, ...
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CradleInputError(f"refused to load {str(path)!r}: it is not a plain tensor file "
                               f"({first})") from None


def atomic_save(obj, path: Path):
    """torch.save through :func:`~cradle_pyro.inference.outputs.atomic_file`: a killed run
    never leaves half a file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


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


EXPLOSION = 10.0  # an epoch's loss this many times the best epoch's counts as divergence


class _Fault(Exception):
    """A numerical fault in one epoch (non-finite loss or gradient, exploding loss)."""


def _snapshot(model, guide, optimizer, objective) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "guide": copy.deepcopy(guide.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "objective": copy.deepcopy(objective.state_dict())}


def _restore(snapshot, model, guide, optimizer, objective):
    model.load_state_dict(snapshot["model"])
    guide.load_state_dict(snapshot["guide"])
    optimizer.load_state_dict(snapshot["optimizer"])
    objective.load_state_dict(snapshot["objective"])


def _train_epoch(objective, model, guide, optimizer, data, tc, epoch, device, rank, world,
                 n_train) -> dict:
    """One pass over the training cells; a numerical fault raises before any step applies it."""
    model.train()
    guide.train()
    totals = {}
    params = _parameters(model, guide)
    for batch in data.batches("train", tc.batch_size, seed=tc.seed * 100003 + epoch,
                              device=device, shard=(rank, world)):
        optimizer.zero_grad()
        try:
            loss = objective(model, guide, **batch.model_kwargs())
        except ValueError as err:  # Pyro's argument validation: a parameter became NaN
            raise _Fault(f"a distribution parameter became invalid "
                         f"({str(err).splitlines()[0][:120]})") from None
        if not torch.isfinite(loss):
            bad = [k for k, v in objective.last_terms.items() if not math.isfinite(v)]
            raise _Fault(f"non-finite objective term(s) {bad or ['loss']}")
        loss.backward()
        if world > 1:
            _average_gradients(params, world)
        norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_norm)
        if not torch.isfinite(norm):
            bad = [n for n, p in list(model.named_parameters()) + list(guide.named_parameters())
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise _Fault(f"non-finite gradient of {bad[:3]}")
        optimizer.step()
        for k, v in objective.last_terms.items():
            totals[k] = totals.get(k, 0.0) + v * batch.size * world / n_train
    return totals


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


def fit(data, train_config=None, model_config=None, **kwargs):
    """Train a model and guide on ``data``'s training cells.

    Parameters
    ----------
    data
        The screen; ``train`` cells are fitted, ``val`` cells drive early stopping.
    train_config, model_config
        :class:`TrainConfig` and :class:`~cradle_pyro.config.ModelConfig`.
    model, guide
        Bring your own (any Pyro guide with the model's signature, e.g. a
        :class:`~cradle_pyro.guides.CombinedGuide` of an autoguide, a mask guide
        and ``BasalGuide``); by default built from the configs.
    checkpoint_dir
        Where ``checkpoint.pt`` is written after every epoch.
    resume
        Continue from ``checkpoint_dir/checkpoint.pt`` (same data and configs).

    ``train_config.threads`` sets torch's CPU threads for the training only:
    the caller's setting is restored afterwards.

    Returns
    -------
    TrainedRun
        With the state ``train_config.select`` chose restored and the loss
        history (per-cell terms: ``loss``, ``elbo``, ``loglik``, ``kl``,
        ``alignment``, ``leakage``, ``val_loss`` = validation −ELBO,
        ``val_alignment``, and ``val_ate_error`` with ``select="ate"``).
    """
    threads = torch.get_num_threads()
    tc = train_config or TrainConfig()
    try:
        if tc.threads:
            torch.set_num_threads(tc.threads)
        if not tc.bootstrap:
            return _fit(data, tc, model_config, **kwargs)
        run = _fit(data.resample_training(tc.seed), tc, model_config, **kwargs)
        run.data = data  # queries read the whole screen, not the replicate
        return run
    finally:
        torch.set_num_threads(threads)


def _fit(
    data: PerturbationData,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    *,
    model: CradleModel | None = None,
    guide=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainedRun:
    """The body of :func:`fit` (which sets and restores the thread count)."""
    n_train = len(data.indices("train"))
    tc = (train_config or TrainConfig()).for_cells(n_train)
    mc = model_config or (model.config if model is not None else ModelConfig())
    device = _resolve_device(tc.device)
    pyro.set_rng_seed(tc.seed)
    model = model or CradleModel.from_data(data, mc)
    guide = guide or make_guide(tc.guide, model, data.gene_mean, data.gene_std,
                                temperature=tc.guide_temperature)
    model.to(device)
    guide.to(device)
    def objective_for(split):
        return CradleELBO(tc.num_particles, tc.beta, tc.class_balance, tc.independence,
                          tc.alignment_weighting).for_data(data, split)

    has_val = len(data.indices("val")) > 0
    objective, val_objective = objective_for("train"), objective_for("val" if has_val else "train")
    # one forward pass creates lazily built parameters (autoguides) before the optimiser; its
    # batch is seeded: the leakage penalty's running group means remember it
    with torch.no_grad():
        objective(model, guide, **next(data.batches("train", tc.batch_size, seed=tc.seed,
                                                    device=device)).model_kwargs())
    initial_loss = objective.last_terms["loss"] / n_train
    optimizer = torch.optim.AdamW(_parameters(model, guide), lr=tc.lr, weight_decay=tc.weight_decay)
    rank, world = _distributed()
    if world > 1:
        # same initial parameters everywhere (seeded above); different noise per rank
        pyro.set_rng_seed(tc.seed + 7919 * rank)

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
        ck = load_tensors(ckpt_path, device)
        model.load_state_dict(ck["model"])
        guide.load_state_dict(ck["guide"])
        optimizer.load_state_dict(ck["optimizer"])
        objective.load_state_dict(ck["objective"])
        val_objective.load_state_dict(ck["val_objective"])
        _set_rng_state(ck["rng"])
        start, history, best, best_epoch, stale = (ck["epoch"] + 1, ck["history"], ck["best"],
                                                   ck["best_epoch"], ck["stale"])
        best_state = ck["best_state"]
    if ckpt_path is not None and rank == 0:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    chosen = (f" (chosen from {n_train:,} training cells; --epochs to set)"
              if tc.epochs_auto else "")
    bar = Progress(tc.epochs, f"train {mc.model}", enabled=tc.progress and rank == 0,
                   initial=start, unit="epoch")
    # the reference for an exploding loss: the untrained model's, or the best epoch's
    best_train = min([initial_loss] + [h["loss"] for h in history])
    epoch, halvings = start, 0
    try:  # the bar is closed on any exit, Ctrl-C included, so messages start a line
        while epoch < tc.epochs:
            snapshot = _snapshot(model, guide, optimizer, objective)
            started = time.perf_counter()
            try:
                totals = _train_epoch(objective, model, guide, optimizer, data, tc, epoch, device,
                                      rank, world, n_train)
                mean_loss = totals.get("loss", 0.0) / n_train
                if not math.isfinite(mean_loss) or (
                        abs(mean_loss) > EXPLOSION * max(abs(best_train), 1.0)):
                    raise _Fault(f"the loss per cell jumped to {mean_loss:.3g} "
                                 f"(reference: {best_train:.3g}, the untrained model or the best epoch)")
            except _Fault as fault:
                _restore(snapshot, model, guide, optimizer, objective)
                halvings += 1
                if tc.on_divergence == "stop" or halvings > tc.max_lr_halvings:
                    bar.close()
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch}: {fault}; parameters were restored to "
                        f"the last good state {halvings - 1} time(s) with the learning rate halved; "
                        f"nothing was saved; try a smaller lr (now {tc.lr}) or clip_norm") from None
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
                warnings.warn(f"epoch {epoch}: {fault}; restored the last good state and halved the "
                              f"learning rate to {optimizer.param_groups[0]['lr']:.3g}", RuntimeWarning)
                continue
            best_train = min(best_train, mean_loss)
            row = {"epoch": epoch, **{k: v / n_train for k, v in totals.items()},
                   "train_seconds": round(time.perf_counter() - started, 3)}
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
            if val_effects:  # draws with its own seed; the training's random stream is kept
                row["val_ate_error"] = val_effects.error(model, guide)
            history.append(row)
            score = row[SELECTION_COLUMN[tc.select]] if tc.select != "last" else -epoch
            if epoch < tc.warmup:
                score = math.inf  # nothing is kept, and patience does not run, before warm-up ends
            if score < best:
                best, best_epoch, stale = score, epoch, 0
                if tc.select != "last":  # the last state needs no copy: it is the one left at the end
                    best_state = {"model": copy.deepcopy(model.state_dict()),
                                  "guide": copy.deepcopy(guide.state_dict())}
            elif epoch >= tc.warmup:
                stale += 1
            terms = dict(loss=f"{row['loss']:.1f}", elbo=f"{row.get('elbo', math.nan):.1f}",
                         kl=f"{row['kl']:.2f}", align=f"{row['alignment']:.3f}",
                         val=f"{row['val_loss']:.1f}")
            if ckpt_path is not None and rank == 0:
                atomic_save({"model": model.state_dict(), "guide": guide.state_dict(),
                             "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                             "objective": objective.state_dict(),
                             "val_objective": val_objective.state_dict(),
                             "epoch": epoch, "history": history, "best": best,
                             "best_epoch": best_epoch, "stale": stale, "best_state": best_state},
                            ckpt_path)
            if epoch == start:  # the first epoch of this process: say how long it all takes
                took = time.perf_counter() - started
                bar.write(f"train {mc.model}: epoch {epoch + 1} took {format_seconds(took)}; "
                          f"{tc.epochs - start} epochs{' left' if start else ''}{chosen} take "
                          f"about {format_seconds(took * (tc.epochs - start))}")
            bar.update(1, **terms)
            epoch += 1
            if stale >= tc.patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state["model"])
        guide.load_state_dict(best_state["guide"])
    model.eval()
    guide.eval()
    return TrainedRun(model, guide, mc, tc, pd.DataFrame(history), best_epoch, data)
