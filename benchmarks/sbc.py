"""Simulation-based calibration of the effect posterior (rank histograms).

Each replicate draws a screen from the model itself: a ``cradle`` model with
its random initial decoder as the generating decoder, globals (``effect``,
``mask``) drawn from their priors, cells of each condition, counts from the
likelihood. A fresh model and guide are fitted to those counts, and for every
(perturbation, gene) the rank of the *true* ATE (computed from the generating
model with 4,000 generated cells per condition) among ``L`` posterior ATE draws
(:func:`cradle_pyro.inference.posterior_ate`) is recorded. Latent coordinates are not
identifiable (any rotation of the latent space with the decoder gives the same
counts), so calibration is checked where it is identifiable: average effects
on genes. Calibrated posteriors give uniform ranks; a U shape means intervals
too narrow, a hump too wide. The decoder is a point estimate (not a posterior),
so its uncertainty is missing from the intervals by construction.

Writes benchmarks/results/sbc.json and benchmarks/results/figures/sbc_ranks.png.

    python benchmarks/sbc.py [--replicates 20] [--draws 39] [--epochs 60] [--threads 1]
"""

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine
from scipy import stats

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.model import CradleModel
from cradle_pyro.inference import TrainConfig, fit, posterior_ate
from cradle_pyro.inference.effects import perturbseq_normalise

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(latent_dim=3, hidden_dim=32, effect_scale=1.0, mask_prob=0.5)


def draw_screen(seed, n_genes, n_perturbations, cells_per_condition):
    """A screen drawn from the model's prior predictive, and its true ATEs."""
    pyro.set_rng_seed(seed)
    truth_model = CradleModel(n_genes, n_perturbations, 1, ModelConfig(**CONFIG),
                              library_loc=np.log(1500.0), library_scale=0.3)
    with torch.no_grad():  # a decoder whose outputs vary across genes
        truth_model.decoder.net[-1].bias.normal_(0.0, 1.0)
        truth_model.log_dispersion.fill_(np.log(5.0))
    names = [f"T{p}" for p in range(n_perturbations)]
    conds = ["control"] + names
    dosage = np.zeros((len(conds) * cells_per_condition, n_perturbations), dtype=np.float32)
    for c in range(1, len(conds)):
        dosage[c * cells_per_condition:(c + 1) * cells_per_condition, c - 1] = 1.0
    n = len(dosage)
    globals_ = poutine.trace(truth_model.sample_globals).get_trace()
    fixed = {k: globals_.nodes[k]["value"] for k in ("effect", "mask", "artifact_effect")}
    world = poutine.condition(truth_model, data=fixed)
    with torch.no_grad():
        tr = poutine.trace(world).get_trace(dosage=torch.as_tensor(dosage),
                                            artifact=torch.zeros(n, 1))
        counts = tr.nodes["counts"]["value"].numpy()
        # true ATEs: many cells per condition from the same world
        big = 4000
        means = []
        for c in range(len(conds)):
            dos = torch.zeros(big, n_perturbations)
            if c:
                dos[:, c - 1] = 1.0
            x = poutine.trace(world).get_trace(dosage=dos, artifact=torch.zeros(big, 1)).nodes["counts"]["value"]
            means.append(np.asarray(perturbseq_normalise(sp.csr_matrix(x.numpy()))).mean(0).ravel())
    ate = np.stack(means[1:]) - means[0]
    obs = pd.DataFrame({"perturbation": np.repeat(conds, cells_per_condition),
                        "clean": np.zeros(n, dtype=int)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs,
                       var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]))
    return adata, names, ate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=20)
    ap.add_argument("--draws", type=int, default=39)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--genes", type=int, default=40)
    ap.add_argument("--perturbations", type=int, default=3)
    ap.add_argument("--cells", type=int, default=150, help="cells per condition")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sbc.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ranks, coverage = [], []
    for rep in range(args.replicates):
        adata, names, ate = draw_screen(1000 + rep, args.genes, args.perturbations, args.cells)
        data = PerturbationData.from_anndata(adata, artifact="clean", seed=rep)
        run = fit(data, TrainConfig(epochs=args.epochs, seed=rep, progress=False, beta=0.0),
                  ModelConfig(**CONFIG))
        post = posterior_ate(run.model, run.guide, data, names, num_draws=args.draws, n_cells=300,
                             seed=rep)
        draws = post.draws                                   # (perturbations, draws, genes)
        r = (draws < ate[:, None, :]).sum(1)                  # rank of the truth, 0..L
        ranks.append(r.ravel())
        lower, upper = post.lower.to_numpy(), post.upper.to_numpy()
        coverage.append(float(((lower <= ate) & (ate <= upper)).mean()))
        print(rep, "coverage(90%)", round(coverage[-1], 3), flush=True)
    ranks = np.concatenate(ranks)
    L = args.draws
    bins = 10
    hist = np.histogram(ranks, bins=bins, range=(-0.5, L + 0.5))[0]
    chi2 = stats.chisquare(hist)
    out = {"replicates": args.replicates, "posterior_draws": L, "genes": args.genes,
           "perturbations": args.perturbations, "cells_per_condition": args.cells,
           "epochs": args.epochs, "rank_histogram": hist.tolist(),
           "chi2_uniform": float(chi2.statistic), "chi2_p": float(chi2.pvalue),
           "share_in_outer_bins": float((hist[0] + hist[-1]) / hist.sum()),
           "expected_share_outer_bins": 2 / bins,
           "coverage_90_mean": float(np.mean(coverage)), "coverage_90_per_replicate": coverage}
    Path(args.out).write_text(json.dumps(out, indent=2))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.bar(np.arange(bins), hist, color="tab:blue")
    ax.axhline(hist.sum() / bins, color="k", ls="--", lw=1, label="uniform")
    ax.set_xlabel(f"rank of the true ATE among {L} posterior draws (binned)")
    ax.set_ylabel("(perturbation, gene) pairs")
    ax.set_title(f"SBC, {args.replicates} prior draws: 90% coverage {np.mean(coverage):.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "results" / "figures" / "sbc_ranks.png", dpi=110)
    print(json.dumps({k: v for k, v in out.items() if k != "coverage_90_per_replicate"}, indent=2))


if __name__ == "__main__":
    main()
