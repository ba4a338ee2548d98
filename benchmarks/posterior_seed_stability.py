"""How much the posterior seed alone moves the held-out scores (Monte Carlo noise of model_ate).

Norman, all eligible combinations held out, one trained ``cradle`` (seed 0,
defaults); ``model_ate`` recomputed with posterior seeds 0-3 at 100 draws ×
200 and × 500 generated cells, and 200 draws × 500; scored with ``score_ates`` (seed 0). The range
over posterior seeds should stay below 0.01.

Writes benchmarks/results/posterior_seed_stability.json.

    python benchmarks/posterior_seed_stability.py
"""

import json
from pathlib import Path

import anndata as ad
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import model_ate
from cradle_pyro.inference.scoring import held_out_conditions, score_ates, summarise_scores

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
OUT = ROOT / "benchmarks" / "results" / "posterior_seed_stability.json"


def main():
    torch.set_num_threads(2)
    data = PerturbationData.from_anndata(ad.read_h5ad(NORMAN), "perturbation", "control",
                                         split="unseen-combinations", heldout_fraction=1.0, seed=0)
    run = fit(data, TrainConfig(seed=0, progress=False), ModelConfig())
    test = held_out_conditions(data)
    out = {"what": "Norman, all eligible combinations held out, one trained cradle (seed 0, "
                   "defaults, direct per-gene path on); model_ate recomputed with posterior seeds "
                   "0-3; scored with score_ates (seed 0)", "num_draws x n_cells": {}}
    for draws, cells in ((100, 200), (100, 500), (200, 500)):
        r_all, r_top = [], []
        for seed in range(4):
            ate = model_ate(run.model, run.guide, data, test, num_draws=draws, n_cells=cells, seed=seed)
            s = summarise_scores(score_ates({"cradle": ate}, data, test, seed=0)).loc["cradle"]
            r_all.append(round(float(s["pearson_all"]), 4))
            r_top.append(round(float(s["pearson_top"]), 4))
        out["num_draws x n_cells"][f"{draws}x{cells}"] = {
            "r_all": r_all, "r_top": r_top, "range_all": max(r_all) - min(r_all),
            "range_top": max(r_top) - min(r_top)}
        print(draws, cells, out["num_draws x n_cells"][f"{draws}x{cells}"], flush=True)
    OUT.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
