"""Simulation-based calibration of the effect posterior (rank histograms), and its diagnosis.

Each replicate draws a screen from the model itself: a ``cradle`` model whose
globals (``effect``, ``mask``, ``gene_effect``, ``library_effect``,
``artifact_effect``) and decoder weights (every layer, N(0, 0.2²), the prior a
``bayesian_decoder`` has) are drawn once from their priors and held fixed, so
that the observed cells and the truth come from one world; cells of each
condition, counts from the likelihood. A fresh run is fitted to those counts at
the training defaults (the same priors), and for every (perturbation, gene) the
rank of the *true* ATE (from the generating model, 4,000 prior cells per
condition) among ``L`` posterior ATE draws over new prior cells
(:func:`cradle_pyro.inference.posterior_ate`, ``basal="prior"``: the truth's
estimand) is recorded. Latent coordinates are not identifiable (a rotation of
the latent space with the decoder gives the same counts), so calibration is
checked where it is identifiable: average effects on genes. Calibrated
posteriors give uniform ranks; a U shape means intervals too narrow, a hump
too wide. Each seed is its own set of ``--replicates`` screens; the χ² test of
uniformity is per seed.

Variants: ``--bayesian-decoder`` (the decoder's weights latents),
``--bootstrap-members K`` (the bagged posterior of K runs on bootstrap
replicates), ``--members K`` (K seeds on the same cells) and, as a diagnosis,
``--oracle-decoder`` (the generating decoder frozen in the fitted model).

Writes ``--out`` (default benchmarks/results/sbc.json) and, with ``--figure``, a rank histogram.

    python benchmarks/sbc.py [--seeds 0,1,2] [--replicates 5] [--bayesian-decoder] [--bootstrap-members 3]
"""

import argparse
import json
import subprocess
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
from cradle_pyro import guides
from cradle_pyro.model import CradleModel
from cradle_pyro.inference import TrainConfig, fit, posterior_ate
from cradle_pyro.inference.ensembles import ensemble_ate, fit_ensemble
from cradle_pyro.inference.effects import perturbseq_normalise

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(latent_dim=3, hidden_dim=32, effect_scale=1.0, mask_prob=0.5,
              gene_effect_scale=0.2, library_effect_scale=0.3, decoder_weight_scale=0.2)


def draw_screen(seed, n_genes, n_perturbations, cells_per_condition, config=None):
    """A screen drawn from the model's prior predictive, its true ATEs and its model."""
    pyro.set_rng_seed(seed)
    # the generating decoder's output layer is drawn from the prior a Bayesian decoder has
    truth = dict(config or CONFIG, bayesian_decoder=True, bayesian_decoder_layers="all")
    truth_model = CradleModel(n_genes, n_perturbations, 1, ModelConfig(**truth),
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
    def draw_globals():
        truth_model.sample_globals()
        truth_model.sample_decoder_weight()

    globals_ = poutine.trace(draw_globals).get_trace()
    # every global (effect, mask, direct and library effects, ...) is drawn once and
    # held fixed: the observed cells and the 4,000-cell truth come from one world
    fixed = {k: node["value"] for k, node in globals_.nodes.items()
             if node["type"] == "sample" and not node["is_observed"]}
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
    with torch.no_grad():   # the drawn weights, where a point-estimate decoder keeps them
        for site, i, _ in truth_model.decoder_weight_sites():
            truth_model.decoder.net[i].weight.copy_(fixed[site])
    obs = pd.DataFrame({"perturbation": np.repeat(conds, cells_per_condition),
                        "clean": np.zeros(n, dtype=int)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs,
                       var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]))
    return adata, names, ate, truth_model


def commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


def oracle_model(data, truth_model, config, dispersion=True):
    """A model for ``data`` whose decoder (and dispersion) are the generating ones, frozen."""
    model = CradleModel.from_data(data, ModelConfig(**dict(config, bayesian_decoder=False)))
    model.decoder.load_state_dict(truth_model.decoder.state_dict())
    frozen = list(model.decoder.parameters())
    if dispersion:
        with torch.no_grad():
            model.log_dispersion.copy_(truth_model.log_dispersion)
        frozen.append(model.log_dispersion)
    for p in frozen:
        p.requires_grad_(False)
    return model


def replicate(rep_seed, args, config, train):
    """One SBC replicate: draw a screen, fit it, rank the truth among posterior draws."""
    adata, names, ate, truth_model = draw_screen(rep_seed, args.genes, args.perturbations,
                                                 args.cells, config)
    data = PerturbationData.from_anndata(adata, artifact="clean", seed=rep_seed)
    tc, mc = TrainConfig(seed=rep_seed, progress=False, **train), ModelConfig(**config)
    common = dict(num_draws=args.draws, n_cells=args.n_cells, seed=rep_seed, basal=args.basal)
    members = max(args.members, args.bootstrap_members)
    if members > 1:   # a mixture of runs: on the same cells, or each on a resample of them
        runs = fit_ensemble(data, tc, mc, members=members, bootstrap=args.bootstrap_members > 1)
        post = ensemble_ate(runs, data, names, **common)
    else:
        model = (oracle_model(data, truth_model, config, dispersion=args.oracle_decoder == "with-dispersion")
                 if args.oracle_decoder else None)
        run = fit(data, tc, mc, model=model)
        post = posterior_ate(run.model, run.guide, data, names, **common)
    ranks = (post.draws < ate[:, None, :]).sum(1)           # rank of the truth, 0..L
    stats_, _ = interval_stats(post, ate)
    return ranks.ravel(), stats_["coverage_90"], stats_["median_width_90"]


def interval_stats(post, ate):
    """Coverage of the true ATE by the 90 % intervals, their median width, and the widths."""
    lower, upper = post.lower.to_numpy(), post.upper.to_numpy()
    return {"coverage_90": float(((lower <= ate) & (ate <= upper)).mean()),
            "median_width_90": float(np.median(upper - lower))}, upper - lower


def rank_test(ranks, draws, bins=10):
    hist = np.histogram(ranks, bins=bins, range=(-0.5, draws + 0.5))[0]
    chi2 = stats.chisquare(hist)
    return hist, float(chi2.statistic), float(chi2.pvalue)


def figure(results: dict, path, draws=39):
    """Rank histograms (pooled over seeds) of labelled SBC result files, one panel each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(results), 3.0))
    axes = np.atleast_1d(fig.subplots(1, len(results), sharey=True))
    for ax, (label, res) in zip(axes, results.items()):
        hist = np.asarray(res["pooled"]["rank_histogram"])
        cover = [v["coverage_90_mean"] for v in res["per_seed"].values()]
        ax.bar(np.arange(len(hist)), hist / hist.sum(), color="tab:blue")
        ax.axhline(1 / len(hist), color="k", ls="--", lw=1)
        ax.set_title(f"{label}\n90% coverage {' / '.join(f'{c:.2f}' for c in cover)}", fontsize=9)
        ax.set_xlabel(f"rank of the truth, 10 bins of 0–{draws}", fontsize=8)
    axes[0].set_ylabel("share of (perturbation, gene) pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="each seed is its own set of replicates")
    ap.add_argument("--replicates", type=int, default=5, help="screens per seed")
    ap.add_argument("--draws", type=int, default=39)
    ap.add_argument("--n-cells", type=int, default=300, help="generated cells per posterior draw")
    ap.add_argument("--epochs", type=int, default=None, help="default: chosen from the data")
    ap.add_argument("--beta", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--independence", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--guide", default=None, help="default: TrainConfig's")
    ap.add_argument("--basal", default="prior", choices=("prior", "abducted"),
                    help="ATE over prior cells (the truth's estimand) or abducted ones")
    ap.add_argument("--oracle-decoder", nargs="?", const="with-dispersion", default=None,
                    choices=("with-dispersion", "weights-only"),
                    help="diagnosis: fit with the generating decoder (and dispersion), frozen")
    ap.add_argument("--bayesian-decoder", action="store_true",
                    help="fit with the decoder's output layer a latent (ModelConfig.bayesian_decoder)")
    ap.add_argument("--decoder-layers", default="output", choices=("output", "all"),
                    help="with --bayesian-decoder: which decoder weights are latents")
    ap.add_argument("--decoder-scale-start", type=float, default=None,
                    help="q(decoder_weight)'s initial scale as a share of the prior's "
                         "(default: cradle_pyro.guides.DECODER_SCALE_START)")
    ap.add_argument("--bootstrap-members", type=int, default=1,
                    help="an ensemble of runs each trained on a resample of the cells (BayesBag)")
    ap.add_argument("--members", type=int, default=1,
                    help="an ensemble of this many runs, read as a mixture posterior")
    ap.add_argument("--genes", type=int, default=40)
    ap.add_argument("--perturbations", type=int, default=3)
    ap.add_argument("--cells", type=int, default=150, help="cells per condition")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sbc.json"))
    ap.add_argument("--figure", default=None, help="rank-histogram PNG (default: none)")
    ap.add_argument("--figure-from", default=None, metavar="LABEL=FILE,...",
                    help="draw the rank histograms of saved result files into --figure and stop")
    args = ap.parse_args()
    if args.figure_from:
        pairs = [item.split("=", 1) for item in args.figure_from.split(",")]
        figure({label: json.loads(Path(f).read_text()) for label, f in pairs},
               args.figure or ROOT / "benchmarks" / "results" / "figures" / "sbc_ranks.png",
               args.draws)
        return
    torch.set_num_threads(args.threads)
    train = {k: v for k, v in (("epochs", args.epochs), ("beta", args.beta), ("threads", args.threads),
                                ("independence", args.independence), ("guide", args.guide))
             if v is not None}
    config = dict(CONFIG, bayesian_decoder=args.bayesian_decoder,
                  bayesian_decoder_layers=args.decoder_layers)
    if args.decoder_scale_start is not None:
        guides.DECODER_SCALE_START = args.decoder_scale_start
    per_seed, all_ranks = {}, []
    for seed in (int(s) for s in args.seeds.split(",")):
        ranks, coverage, widths = [], [], []
        for rep in range(args.replicates):
            r, cov, width = replicate(1000 + 100 * seed + rep, args, config, train)
            ranks.append(r), coverage.append(cov), widths.append(width)
            print(f"seed {seed} replicate {rep}: coverage(90%) {cov:.3f}, median width {width:.3f}",
                  flush=True)
        ranks = np.concatenate(ranks)
        all_ranks.append(ranks)
        hist, chi2, p = rank_test(ranks, args.draws)
        per_seed[seed] = {"rank_histogram": hist.tolist(), "chi2_uniform": chi2, "chi2_p": p,
                          "share_in_outer_bins": float((hist[0] + hist[-1]) / hist.sum()),
                          "coverage_90_mean": float(np.mean(coverage)),
                          "median_width_90": float(np.median(widths)),
                          "coverage_90_per_replicate": coverage}
    hist, chi2, p = rank_test(np.concatenate(all_ranks), args.draws)
    out = {"settings": {"model": config, "train": train or "TrainConfig defaults",
                        "replicates_per_seed": args.replicates, "posterior_draws": args.draws,
                        "generated_cells_per_draw": args.n_cells, "basal": args.basal,
                        "oracle_decoder": args.oracle_decoder, "members": args.members,
                        "bootstrap_members": args.bootstrap_members,
                        "decoder_scale_start": guides.DECODER_SCALE_START,
                        "genes": args.genes,
                        "perturbations": args.perturbations, "cells_per_condition": args.cells},
           "commit": commit(), "per_seed": per_seed,
           "pooled": {"rank_histogram": hist.tolist(), "chi2_uniform": chi2, "chi2_p": p,
                      "coverage_90_mean": float(np.mean([v["coverage_90_mean"]
                                                         for v in per_seed.values()]))},
           "expected_share_outer_bins": 0.2}
    Path(args.out).write_text(json.dumps(out, indent=2))
    if args.figure:
        figure({"this run": out}, args.figure, args.draws)
    print(json.dumps({k: {s: {m: v[m] for m in ("chi2_p", "coverage_90_mean", "median_width_90")}
                          for s, v in per_seed.items()} if k == "per_seed" else out[k]
                      for k in ("per_seed", "pooled")}, indent=2))


if __name__ == "__main__":
    main()
