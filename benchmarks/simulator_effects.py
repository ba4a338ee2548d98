"""Effects where the truth is known: recovery, shrinkage, calibration, leakage, knockdowns.

On the default simulated screen (5,000 cells × 1,000 genes) and on a
CRISPRi-like screen (single-gene knockdowns of each target, 3,000 × 500), for
each seed and model at the default ``cradle-pyro train`` settings:

- ATE Pearson r against the true ATE (mean over conditions), slope of the
  model's ATE on the true ATE (1 = no shrinkage), all genes and top-20;
- calibration: share of true ATEs inside the central credible interval, at
  masses 0.5, 0.8, 0.9 and 0.95 (figure: nominal vs empirical);
- basal leakage: per condition, |mean q(basal) − control's| / |offset|;
- knockdowns: the model's ATE on each single's own target gene over the true one.

Writes benchmarks/results/simulator_effects.json and
benchmarks/results/figures/calibration.png.

    python benchmarks/simulator_effects.py [--seeds 0,1,2] [--models cradle,sams]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import PosteriorATE, posterior_ate
from cradle_pyro.inference.metrics import basal_leakage

RESULTS = Path(__file__).resolve().parent / "results"
MASSES = (0.5, 0.8, 0.9, 0.95)


def truth_table(adata) -> pd.DataFrame:
    t = adata.uns["truth"]
    return pd.DataFrame(np.asarray(t["ate"]), index=list(t["ate_conditions"]),
                        columns=list(adata.var_names))


def recovery(post: PosteriorATE, truth: pd.DataFrame) -> dict:
    mean = post.mean
    rs, slopes, slopes_top = [], [], []
    for c in post.perturbations:
        t, p = truth.loc[c].to_numpy(), mean.loc[c].to_numpy()
        top = np.argsort(-np.abs(t))[:20]
        rs.append(np.corrcoef(t, p)[0, 1])
        slopes.append(np.polyfit(t, p, 1)[0])
        slopes_top.append(np.polyfit(t[top], p[top], 1)[0])
    t = truth.loc[post.perturbations].to_numpy()
    coverage = {}
    for mass in MASSES:
        post.interval = mass
        lo, up = post.lower.to_numpy(), post.upper.to_numpy()
        coverage[str(mass)] = float(((lo <= t) & (t <= up)).mean())
    post.interval = 0.9
    err = mean.loc[post.perturbations].to_numpy() - t
    return {"ate_r_mean": float(np.mean(rs)), "ate_r_min": float(np.min(rs)),
            "ate_rmse": float(np.sqrt((err ** 2).mean())),
            "slope_all": float(np.mean(slopes)), "slope_top20": float(np.mean(slopes_top)),
            "coverage": coverage}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="cradle,sams")
    ap.add_argument("--screens", default="standard,crispri")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "simulator_effects.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"settings": "cradle-pyro train defaults; seed varies", "screens": {}}
    screens = {"standard": dict(), "crispri": dict(n_cells=3000, n_genes=500, knockdown=-2.0)}
    for screen in args.screens.split(","):
        sim_args = screens[screen]
        per_seed = {}
        for seed in [int(s) for s in args.seeds.split(",")]:
            adata = simulate_screen(seed=seed, **sim_args)
            truth = truth_table(adata)
            data = PerturbationData.from_anndata(adata, doublets=False, seed=seed)
            for kind in args.models.split(","):
                t0 = time.time()
                run = fit(data, TrainConfig(seed=seed, progress=False), ModelConfig(model=kind))
                post = posterior_ate(run.model, run.guide, data, list(truth.index), seed=seed)
                res = recovery(post, truth)
                res["train_seconds"] = round(time.time() - t0, 1)
                res["epochs_run"] = len(run.history)
                res["basal_leakage_median"] = float(
                    basal_leakage(run.model, run.guide, data, split="train")["leakage"].median())
                if screen == "crispri":
                    targets = list(adata.uns["truth"]["target_gene"])
                    ratio = [post.mean.loc[g, g] / truth.loc[g, g] for g in targets]
                    res["target_gene_ratio"] = [round(float(r), 3) for r in ratio]
                    res["target_within_20pct"] = int(np.sum(np.abs(np.array(ratio) - 1) <= 0.2))
                per_seed.setdefault(kind, {})[seed] = res
                print(screen, kind, seed, json.dumps({k: v for k, v in res.items()
                                                      if k != "target_gene_ratio"}), flush=True)
        results["screens"][screen] = {"simulator_args": sim_args, "per_seed": per_seed,
                                      "mean_over_seeds": _means(per_seed)}
    Path(args.out).write_text(json.dumps(results, indent=2))
    _calibration_figure(results, RESULTS / "figures" / "calibration.png")


def _means(per_seed):
    out = {}
    for kind, seeds in per_seed.items():
        rows = list(seeds.values())
        out[kind] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                     if isinstance(rows[0][k], (int, float))}
        out[kind]["coverage"] = {m: float(np.mean([r["coverage"][m] for r in rows]))
                                 for m in rows[0]["coverage"]}
    return out


def _calibration_figure(results, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4.2, 4))
    ax = fig.subplots()
    series = [(screen, kind, per_seed) for screen, res in results["screens"].items()
              for kind, per_seed in res["per_seed"].items()]
    for i, (screen, kind, per_seed) in enumerate(series):
        for j, r in enumerate(per_seed.values()):  # one colour per screen and model, a line per seed
            ax.plot([float(m) for m in r["coverage"]], list(r["coverage"].values()), "o-",
                    color=f"C{i}", alpha=0.6, label=f"{screen} {kind}" if j == 0 else None)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("credible interval mass (nominal)")
    ax.set_ylabel("share of true ATEs inside")
    ax.set_title("Calibration of ATE intervals (simulator)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
