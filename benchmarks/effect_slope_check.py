"""What the shrinkage metrics give a perfect predictor, where truth is known.

On simulated screens with Norman's shape (12 singles, 8 doubles, about 100
cells per condition, 500 genes) at the default effect strength and at a weak
one (``effect_scale=0.4``, like Norman's CRISPRa singles), three seeds each,
scores the true ATE itself and half of it as predictors of the singles with

- the slope of predicted on observed ATE over the top-20 genes chosen by that
  observed ATE (``score_ates``' ``slope_top``), raw and divided by the truth's
  split-half reliability;
- :func:`cradle_pyro.inference.scoring.effect_slope` (genes chosen on one half of the
  cells, noise removed with the other half).

A perfect predictor should score 1 and half of it 0.5.

Writes benchmarks/results/effect_slope_check.json.

    python benchmarks/effect_slope_check.py
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cradle_pyro import PerturbationData, simulate_screen
from cradle_pyro.inference.scoring import effect_slope, score_ates_shared_controls, summarise_scores

OUT = Path(__file__).resolve().parent / "results" / "effect_slope_check.json"


def main():
    results = {}
    for strength, effect_scale in (("default", 1.5), ("weak", 0.4)):
        for seed in (0, 1, 2):
            a = simulate_screen(n_cells=2500, n_genes=500, n_singles=12, n_combinations=8,
                                effect_scale=effect_scale, n_truth_cells=2000, seed=seed)
            data = PerturbationData.from_anndata(a, doublets=False, seed=seed)
            t = a.uns["truth"]
            truth = pd.DataFrame(np.asarray(t["ate"]), index=list(t["ate_conditions"]),
                                 columns=data.gene_names)
            singles = [c for c in truth.index if "+" not in c]
            preds = {"truth": truth, "half": truth * 0.5}
            new = effect_slope(preds, data, singles, seed=seed)["slope"]
            old = summarise_scores(score_ates_shared_controls(preds, data, singles, split=None, additive=False,
                                              seed=seed))
            rel = old.loc["ceiling", "pearson_top"]
            results.setdefault(strength, {})[seed] = {
                name: {"effect_slope": float(new[name]), "slope_top": float(old.loc[name, "slope_top"]),
                       "slope_top_over_reliability": float(old.loc[name, "slope_top"] / rel)}
                for name in preds}
            print(strength, seed, json.dumps(results[strength][seed]), flush=True)
    OUT.write_text(json.dumps({"settings": "simulate_screen(2500, 500, 12 singles, 8 doubles, "
                                           "n_truth_cells=2000); seeds 0-2",
                               "per_strength": results}, indent=2))


if __name__ == "__main__":
    main()
