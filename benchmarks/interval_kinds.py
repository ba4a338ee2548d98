"""Coverage of the two interval kinds on Norman's held-out doubles.

Official split (all five eligible doubles held out, as ``norman_unseen_combinations.py``, and
half the control cells with them: the equal-terms split), ``cradle`` at the default training
settings, 3 seeds. For each held-out double the observed ATE is the mean of its clean test
cells minus the mean of the clean held-out control cells (log2 CP10k), cells no run trained
on. Against it, at the default 200 posterior draws:

- ``ate``: the credible interval of the population ATE (the estimand);
- ``observed``: the predictive interval of an ATE observed from as many cells as the observed
  one averages (``posterior_ate(kind="observed")``).

Coverage of the 90 % intervals is reported over all genes, over expressed genes (a count in
some cell of the screen; 250 of Norman's 500 genes have none) and over each double's 20 genes
of largest |observed ATE| (chosen on the same cells, so the winner's curse works against it).
No cell of the observed ATE was trained on, so this checks the model's predictive distribution
on the equal-terms protocol (``inference/scoring.py``).

Run: python benchmarks/interval_kinds.py [--seeds 0,1,2]  →  benchmarks/results/interval_kinds.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
OUT = ROOT / "benchmarks" / "results" / "interval_kinds.json"


def coverage(post, observed, genes) -> dict:
    inside = (post.lower.to_numpy() <= observed) & (observed <= post.upper.to_numpy())
    top = np.argsort(-np.abs(observed), axis=1)[:, :20]
    return {"all_genes": float(inside.mean()),
            "expressed_genes": float(inside[:, genes].mean()),
            "top20_genes": float(np.take_along_axis(inside, top, 1).mean()),
            "mean_width_expressed": float((post.upper - post.lower).to_numpy()[:, genes].mean())}


def main():
    import anndata as ad
    import torch

    from cradle_pyro import ModelConfig, PerturbationData
    from cradle_pyro.inference import TrainConfig, fit
    from cradle_pyro.inference.ensembles import ensemble_ate, fit_ensemble
    from cradle_pyro.inference.effects import perturbseq_normalise
    from cradle_pyro.inference.scoring import clean_cells, score_ates

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bayesian-decoder", action="store_true",
                    help="the decoder's output layer a latent (ModelConfig.bayesian_decoder)")
    ap.add_argument("--members", type=int, default=1,
                    help="an ensemble of this many runs, read as a mixture posterior")
    ap.add_argument("--bootstrap", action="store_true",
                    help="with --members: each member on a bootstrap replicate (bagged posterior)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(NORMAN)
    report = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "settings": {"model": "cradle", "train": "TrainConfig() defaults",
                           "num_draws": 200, "n_cells": 500, "interval": 0.9,
                           "threads": args.threads, "members": args.members,
                           "bayesian_decoder": args.bayesian_decoder,
                           "bootstrap": args.bootstrap,
                           "observed": "held-out double cells minus held-out control cells"},
              "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = PerturbationData.from_anndata(adata, "perturbation", "control",
                                             split="unseen-combinations", heldout_fraction=1.0,
                                             seed=seed)
        tc = TrainConfig(seed=seed, progress=False)
        mc = ModelConfig(bayesian_decoder=args.bayesian_decoder)
        runs = (fit_ensemble(data, tc, mc, members=args.members, bootstrap=args.bootstrap)
                if args.members > 1 else [fit(data, tc, mc)])
        held = sorted({c for c, s in zip(data.conditions, data.split) if s == "test"
                       and data.separator in c})
        control = clean_cells(data, data.control_label, split="test")
        base = perturbseq_normalise(data.counts[control]).mean(0)
        cells = {p: clean_cells(data, p, split="test") for p in held}
        observed = np.stack([perturbseq_normalise(data.counts[cells[p]]).mean(0) - base
                             for p in held])
        sizes = {p: (len(cells[p]), len(control)) for p in held}
        expressed = np.asarray(data.counts.sum(0)).ravel() > 0
        result = {"held_out": held, "cells": sizes}
        for kind in ("ate", "observed"):
            post = ensemble_ate(runs, data, held, seed=seed, kind=kind,
                                observed_cells=sizes if kind == "observed" else None)
            result[kind] = coverage(post, observed, expressed)
            if kind == "ate":   # point accuracy of the posterior mean, on equal terms
                scores = score_ates({"cradle": post.mean}, data, held, seed=seed, baselines=())
                scores = scores[scores.predictor == "cradle"]
                result["r"] = {"all_genes": float(scores.pearson_all.mean()),
                               "top20_genes": float(scores.pearson_top.mean())}
        report["seeds"][str(seed)] = result
        print(seed, {k: result[k] for k in ("ate", "observed", "r")}, flush=True)
    for kind in ("ate", "observed", "r"):
        metrics = report["seeds"][next(iter(report["seeds"]))][kind]
        report[f"mean_{kind}"] = {m: float(np.mean([r[kind][m] for r in report["seeds"].values()]))
                                  for m in metrics}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k.startswith("mean")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
