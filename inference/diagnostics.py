"""Posterior diagnostics and model comparison in ArviZ.

- :func:`to_arviz`: posterior draws of the global sites (``effect``, ``mask``,
  ``artifact_effect`` and any other global site a user's prior adds) from the
  guide, posterior predictive ``counts`` and observed counts for a subset of
  cells, and the pointwise log-likelihood per cell, with named coords and dims.
  Several runs (seeds) become chains, so ``rhat`` and ``ess`` across runs mean
  something. ArviZ 0.x returns ``InferenceData``; ArviZ 1.x
  (``arviz_base.from_dict``) returns a ``DataTree``.
- :func:`psis_khat`: the Pareto-smoothed importance sampling diagnostic of the
  guide from ``log p(x, z) − log q(z | x)``, per cell and overall.
- :func:`compare`: PSIS-LOO comparison of trained models on the same cells
  through ``az.compare``.
- :func:`diagnose_run`: summary table, forest plot, predictive checks and a
  netCDF file.

The pointwise log-likelihood of cell n under posterior draw s of the globals
is the importance-weighted estimate ``log p(x_n | globals_s)`` over ``K``
draws of its basal state from the guide (the basal state is local, so it is
integrated out rather than left in the "parameters").

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> data = PerturbationData.from_anndata(simulate_screen(300, 60, seed=0), doublets=False)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> idata = to_arviz([run], data, n_cells=20, num_draws=10)
>>> sorted(idata.groups())[:3]
['log_likelihood', 'observed_data', 'posterior']
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from .objective import per_cell_log_weights
from .outputs import atomic_file, save_figure, write_csv
from .seeding import keeps_global_rng

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

ARVIZ_MAJOR = int(az.__version__.split(".")[0])
KHAT_GOOD = 0.7
LOCAL_SITES = ("basal", "dosage", "artifact", "counts", "library")


def _site_dims(name, data, shape):
    """Named dims of a global site from its shape."""
    if name in ("effect", "mask") and len(shape) == 2:
        return ["perturbation", "latent"]
    if name == "artifact_effect":
        return ["artifact_kind", "latent"]
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _subset(data, n_cells, split, seed):
    idx = data.indices(split)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, min(n_cells, len(idx)), replace=False))


@keeps_global_rng
def _draws(run, batch, num_draws, num_inner, seed):
    """Per draw: global values, predictive counts, pointwise log-likelihood."""
    model, guide = run.model, run.guide
    kw = dict(batch.model_kwargs(), num_cells=None, cell_index=None, reference=None)
    pyro.set_rng_seed(seed)
    globals_, predictive, loglik = {}, [], []
    with torch.no_grad():
        for _ in range(num_draws):
            gtr = poutine.trace(guide).get_trace(**kw)
            names = [n for n, s in gtr.nodes.items() if s["type"] == "sample"
                     and n not in LOCAL_SITES and not n.startswith("_")
                     and not s["infer"].get("is_auxiliary") and n not in ("cells", "perturbations", "artifact_kinds")]
            fixed = {n: gtr.nodes[n]["value"] for n in names}
            for n in names:
                globals_.setdefault(n, []).append(fixed[n].cpu().numpy())
            # predictive counts of these cells under this draw
            mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(**dict(kw, counts=None))
            predictive.append(mtr.nodes["counts"]["value"].cpu().numpy())
            # log p(x_n | globals) by importance sampling over the basal state
            w = per_cell_log_weights(poutine.condition(model, data=fixed),
                                     poutine.condition(guide, data=fixed), num_inner, **kw)
            loglik.append((torch.logsumexp(w, 0) - np.log(num_inner)).cpu().numpy())
    return ({k: np.stack(v) for k, v in globals_.items()}, np.stack(predictive), np.stack(loglik))


def to_arviz(runs, data, *, n_cells: int = 100, num_draws: int = 100, num_inner: int = 10,
             split: str | None = "test", seed: int = 0):
    """ArviZ data of one or more runs on the same cells (runs become chains).

    Returns ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ 1.x) with
    groups ``posterior``, ``posterior_predictive``, ``observed_data`` and
    ``log_likelihood``; dims name perturbations, latent dims, artifact kinds,
    cells and genes.
    """
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    if split is not None and len(data.indices(split)) == 0:
        split = None
    cells = _subset(data, n_cells, split, seed)
    batch = data.batch(cells, device=runs[0].model.device)
    per_run = [_draws(r, batch, num_draws, num_inner, seed + 1000 * i) for i, r in enumerate(runs)]
    posterior = {k: np.stack([p[0][k] for p in per_run]) for k in per_run[0][0]}
    cell_ids = [data.obs_names[i] for i in cells]
    coords = {"perturbation": data.perturbation_names, "artifact_kind": data.artifact_names,
              "latent": list(range(runs[0].model.latent_dim)), "cell": cell_ids,
              "gene": data.gene_names}
    dims = {k: _site_dims(k, data, v.shape[2:]) for k, v in posterior.items()}
    dims.update({"counts": ["cell", "gene"]})
    groups = dict(
        posterior=posterior,
        posterior_predictive={"counts": np.stack([p[1] for p in per_run]).astype(np.int32)},
        observed_data={"counts": batch.counts.cpu().numpy().astype(np.int32)},
        log_likelihood={"counts": np.stack([p[2] for p in per_run])},
    )
    log_lik_dims = {"counts": ["cell"]}
    if ARVIZ_MAJOR >= 1:  # pragma: no cover - ArviZ 1.x is not installable on Python 3.11
        from arviz_base import from_dict

        dims_all = {**dims, **{f"log_likelihood/{k}": v for k, v in log_lik_dims.items()}}
        tree = from_dict(groups, coords=coords, dims=dims_all)
        tree["posterior"].attrs.update(objective_terms(runs))
        return tree
    idata = az.from_dict(**{k: v for k, v in groups.items() if k != "log_likelihood"},
                         coords=coords, dims=dims)
    ll = az.from_dict(log_likelihood=groups["log_likelihood"], coords=coords, dims=log_lik_dims)
    idata.extend(ll)
    idata.posterior.attrs.update(objective_terms(runs))
    return idata


OBJECTIVE = "loss = -elbo + beta * alignment + independence * leakage (per training cell)"


def objective_terms(runs) -> dict:
    """The training objective's terms at each run's last epoch, each under its own name.

    The loss the optimiser minimised is not an ELBO when the alignment or the
    independence penalty is on; the ELBO is reported beside it, per run (chain).
    Stored as attributes of the ArviZ ``posterior`` group (``training_elbo``, …).
    """
    terms = {"objective": OBJECTIVE}
    for name in ("loss", "elbo", "alignment", "leakage"):
        values = [float(r.history[name].iloc[-1]) if name in r.history and len(r.history)
                  else float("nan") for r in runs]
        terms[f"training_{name}"] = values
    return terms


@keeps_global_rng
def psis_khat(run, data, *, split: str | None = "test", n_cells: int = 500,
              num_particles: int = 200, seed: int = 0) -> dict:
    """PSIS k-hat of the guide, per cell, over the subset, and for the whole guide.

    Importance weights ``log p(x_n, z) − log q(z | x_n)`` over ``num_particles``
    draws of (globals, basal). k < 0.7: the guide is a usable proposal; above,
    importance-weighted estimates from it are unreliable. ``khat_overall``
    sums the cells' local weights; ``khat_whole_guide`` adds the globals' own
    ``log p(g) − log q(g)`` (effects, masks, artifact effects), so it judges
    q(globals) too (it is a joint weight over all ``n_cells`` cells, so large
    values are expected for many cells).
    """
    if split is not None and len(data.indices(split)) == 0:
        split = None
    cells = _subset(data, n_cells, split, seed)
    batch = data.batch(cells, device=run.model.device)
    pyro.set_rng_seed(seed)
    w, g = per_cell_log_weights(run.model, run.guide, num_particles, return_globals=True,
                                **batch.model_kwargs())
    w = w.cpu().numpy().astype(np.float64)
    g = g.detach().cpu().numpy().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k_cell = az.psislw(w.T)
        _, k_all = az.psislw(w.sum(1)[None, :])
        _, k_whole = az.psislw((w.sum(1) + g)[None, :])
        _, k_globals = az.psislw(g[None, :])
    k_cell = np.asarray(k_cell)
    return {"khat_per_cell": k_cell, "khat_overall": float(np.asarray(k_all).ravel()[0]),
            "khat_whole_guide": float(np.asarray(k_whole).ravel()[0]),
            "khat_globals": float(np.asarray(k_globals).ravel()[0]),
            "share_below_0.7": float((k_cell < KHAT_GOOD).mean()),
            "median": float(np.median(k_cell)),
            "reading": "k < 0.5 good, 0.5-0.7 ok, > 0.7 the guide is a poor proposal for that cell"}


def compare(idatas: dict, ic: str = "loo"):
    """``az.compare`` of models fitted to the same cells (PSIS-LOO by default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(idatas, ic=ic)


def sibling_paths(out) -> dict:
    """The files :func:`diagnose_run` writes beside its netCDF ``out``."""
    stem = Path(out).with_suffix("")
    return {"summary": Path(f"{stem}_summary.csv"), "forest": Path(f"{stem}_forest.png"),
            "ppc": Path(f"{stem}_ppc.png"), "khat": Path(f"{stem}_khat.csv")}


def diagnose_run(run, out, *, n_cells: int = 100, num_draws: int = 100, seed: int = 0,
                 extra_runs=()) -> dict:
    """Write ``out`` (netCDF) with summary CSV, forest plot and predictive checks beside it.

    Every file is written to a temporary sibling and renamed into place.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = sibling_paths(out)
    data = run.data
    idata = to_arviz([run, *extra_runs], data, n_cells=n_cells, num_draws=num_draws, seed=seed)
    with atomic_file(out) as tmp:
        idata.to_netcdf(str(tmp))
    var_names = [v for v in idata.posterior.data_vars if v != "mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata, var_names=var_names)
    write_csv(summary, paths["summary"])
    # forest plot of the strongest perturbation effects
    if "effect" in idata.posterior:
        eff = idata.posterior["effect"]
        if "mask" in idata.posterior:
            eff = eff * idata.posterior["mask"]
        strength = np.abs(eff.mean(("chain", "draw"))).max("latent").to_series()
        top = list(strength.sort_values(ascending=False).index[:10])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = az.plot_forest(idata, var_names=["effect"], coords={"perturbation": top},
                                  combined=True,
                                  figsize=(6, max(3, 0.3 * len(top) * run.model.latent_dim)))
        fig = np.ravel(axes)[0].figure
        save_figure(fig, paths["forest"], dpi=100, bbox_inches="tight")
        plt.close(fig)
    _ppc_figure(idata, paths["ppc"])
    k = psis_khat(run, data, n_cells=min(500, n_cells * 5), seed=seed)
    write_csv(pd.DataFrame({"khat": k["khat_per_cell"]}), paths["khat"], index=False)
    return {"netcdf": str(out), "summary": str(paths["summary"]), "forest": str(paths["forest"]),
            "ppc": str(paths["ppc"]), "khat_median": k["median"],
            "khat_share_below_0.7": k["share_below_0.7"], "khat_overall": k["khat_overall"],
            "khat_globals": k["khat_globals"], "khat_whole_guide": k["khat_whole_guide"],
            "khat_reading": k["reading"]}


def _ppc_figure(idata, path):
    from matplotlib.figure import Figure

    obs = idata.observed_data["counts"].values
    pred = idata.posterior_predictive["counts"].values.reshape(-1, *obs.shape)
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots(1, 2)
    lib_pred = np.log1p(pred.sum(-1)).ravel()
    lib_obs = np.log1p(obs.sum(-1))
    bins = np.histogram_bin_edges(np.concatenate([lib_pred, lib_obs]), 30)
    ax[0].hist(lib_pred, bins=bins, density=True, alpha=0.5, label="posterior predictive")
    ax[0].hist(lib_obs, bins=bins, density=True, alpha=0.5, label="observed")
    ax[0].set_xlabel("log1p library size")
    ax[0].legend(fontsize=7)
    ax[1].scatter(np.log1p(obs.mean(0)), np.log1p(pred.mean((0, 1))), s=4)
    lim = np.log1p(max(obs.mean(0).max(), pred.mean((0, 1)).max()))
    ax[1].plot([0, lim], [0, lim], color="grey", lw=0.8)
    ax[1].set_xlabel("observed gene mean (log1p)")
    ax[1].set_ylabel("predicted gene mean (log1p)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def load_netcdf(path):
    """Read a netCDF written by :func:`diagnose_run`."""
    return az.from_netcdf(str(path))
