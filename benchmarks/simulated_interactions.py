"""Simulated screens with genetic interactions of known kind: how well the posterior ranks unseen pairs.

``simulate_screen(..., interaction_programmes=True)``: 20 singles, so 190 pairs. Of these, 40
are measured and the other 150 are unseen. Interactions come from how latent programmes act on
expression:

- a saturating programme (two pushes buffer);
- a threshold programme (two pushes are synergistic);
- a gated programme (closing the gate masks the gated push: epistasis).

Every other pair is additive up to the normalisation. ``cradle`` trains with the default
settings. Then ``interaction_posterior`` (the batched engine at its defaults) is asked for every
unseen pair. Reported, per setting and seed:

- AUROC of ``prob_interacting`` (P(ratio > 0.2), the query's own summary) for interacting vs
  additive unseen pairs, beside the AUROC of the true interaction's size (what a perfect
  predictor would reach given the truth's own Monte Carlo noise), and of ``ratio``;
- per unseen pair, MSE and r of the predicted interaction (posterior mean) against the true one,
  beside predicting no interaction (MSE = mean of the truth², r undefined);
- the same split by kind.

Settings: ``standard`` (4,000 cells, 500 genes, effect scale 1.5, library 2,500) and
``shallow`` (library 1,200, effect scale 1.2: weaker effects, noisier counts).

Run: python benchmarks/simulated_interactions.py [--seeds 0,1,2] [--settings standard,shallow]
→ benchmarks/results/simulated_interactions.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "simulated_interactions.json"
SETTINGS = {"standard": {}, "shallow": {"library_median": 1200.0, "effect_scale": 1.2}}


def score_seed(setting, seed, threads):
    import torch
    from sklearn.metrics import roc_auc_score

    from cradle_pyro import PerturbationData, simulate_screen
    from cradle_pyro.inference import TrainConfig, fit
    from cradle_pyro.inference.interactions import interaction_posterior

    torch.set_num_threads(threads)
    adata = simulate_screen(4000, 500, n_singles=20, n_combinations=40,
                            interaction_programmes=True, seed=seed, **SETTINGS[setting])
    truth = adata.uns["truth"]
    kinds = dict(zip(truth["pairs"], truth["pair_kind"]))
    true_inter = dict(zip(truth["pairs"], truth["pair_interaction"]))
    data = PerturbationData.from_anndata(adata, doublets=False)
    t0 = time.time()
    run = fit(data, TrainConfig(seed=seed, progress=False))
    train_s = time.time() - t0
    unseen = [p for p in truth["pairs"] if p not in set(data.condition_names)]
    t0 = time.time()
    post = interaction_posterior([run], data, unseen, seed=seed)
    query_s = time.time() - t0
    summary = post.summary().set_index("pair").loc[unseen]
    label = np.array([kinds[p] != "additive" for p in unseen])
    pred = post.mean.loc[unseen].to_numpy()
    true = np.stack([true_inter[p] for p in unseen])
    mse = ((pred - true) ** 2).mean(1)
    r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(pred, true)])
    by_kind = {}
    for kind in ("buffering", "synergy", "epistasis", "additive"):
        m = np.array([kinds[p] == kind for p in unseen])
        by_kind[kind] = {"pairs": int(m.sum()), "mse_model": float(mse[m].mean()),
                         "mse_no_interaction": float((true[m] ** 2).mean()),
                         "r_model": float(r[m].mean()),
                         "size_predicted": float(np.linalg.norm(pred[m], axis=1).mean()),
                         "size_true": float(np.linalg.norm(true[m], axis=1).mean())}
    return {"unseen_pairs": len(unseen), "interacting_unseen": int(label.sum()),
            "auroc_prob_interacting": float(roc_auc_score(label, summary["prob_interacting"])),
            "auroc_ratio": float(roc_auc_score(label, summary["ratio"])),
            "auroc_true_size": float(roc_auc_score(label, np.linalg.norm(true, axis=1))),
            "mse_model": float(mse.mean()), "mse_no_interaction": float((true ** 2).mean()),
            "r_model": float(np.nanmean(r)), "by_kind": by_kind,
            "train_seconds": round(train_s, 1), "query_seconds": round(query_s, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default="standard,shallow")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    report = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "threads": args.threads, "settings": SETTINGS, "results": {}}
    if OUT.exists():  # settings run separately are merged
        report["results"] = json.loads(OUT.read_text()).get("results", {})
    for setting in args.settings.split(","):
        per_seed = {}
        for seed in [int(s) for s in args.seeds.split(",")]:
            per_seed[str(seed)] = score_seed(setting, seed, args.threads)
            print(setting, seed, {k: v for k, v in per_seed[str(seed)].items() if k != "by_kind"},
                  flush=True)
        keys = ("auroc_prob_interacting", "auroc_ratio", "auroc_true_size", "mse_model",
                "mse_no_interaction", "r_model")
        report["results"][setting] = {
            "per_seed": per_seed,
            "mean": {k: float(np.mean([v[k] for v in per_seed.values()])) for k in keys}}
        summary = {"commit": report["commit"],  # the means first: what a reader checks
                   "mean": {s: v["mean"] for s, v in report["results"].items()}}
        OUT.write_text(json.dumps({**summary, **report}, indent=2))
    print(json.dumps({s: v["mean"] for s, v in report["results"].items()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
