"""Where the Norman held-out error lies: in the single effects, or in how they compose?

Reads the model ATE tables that ``norman_unseen_combinations.py`` saved
(``results/norman/seed<k>/ate_<model>.csv``: the five held-out doubles and
their six singles) and scores, against the same fair truth (clean cells,
disjoint control halves, ceiling beside), two predictions of each double:

- ``joint``: the model's own ATE under ``do(A+B)``;
- ``sum of singles``: the model's ATE(A) + ATE(B), i.e. the model's singles
  composed additively in expression space.

If the two score alike, the model composes its singles the way the data does
(on this screen the doubles are close to additive) and what keeps the score
below a perfect predictor is the accuracy of the single effects themselves.
No training: the tables are read as saved.

Writes benchmarks/results/norman_error_sources.json.

    python benchmarks/norman_error_sources.py [--seeds 0,1,2] [--models cradle,sams]
"""

import argparse
import json

import anndata as ad
import numpy as np
import pandas as pd

from cradle_pyro.splits import targets_of
from gene_effects import NORMAN, RESULTS, norman_data
from cradle_pyro.inference.scoring import score_ates, summarise_scores

COLUMNS = ("pearson_all", "pearson_top", "slope_top")


def saved_ate(seed, model, genes) -> pd.DataFrame:
    """The model's mean ATE table (conditions × genes) as the Norman benchmark saved it."""
    long = pd.read_csv(RESULTS / "norman" / f"seed{seed}" / f"ate_{model}.csv")
    return long.pivot(index="perturbation", columns="gene", values="mean")[list(genes)]


def seed_scores(adata, seed, models) -> dict:
    data = norman_data(adata, seed)
    predictions = {}
    for model in models:
        ate = saved_ate(seed, model, data.gene_names)
        doubles = [p for p in ate.index if data.separator in p]
        predictions[f"{model} joint"] = ate.loc[doubles]
        predictions[f"{model} sum of singles"] = pd.DataFrame(
            [ate.loc[targets_of(p, data.control_label, data.separator)].sum(0) for p in doubles],
            index=doubles)
    table = summarise_scores(score_ates(predictions, data, doubles, seed=seed))
    return {row: {c: float(table.loc[row, c]) for c in COLUMNS if np.isfinite(table.loc[row, c])}
            for row in table.index}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="cradle,sams")
    args = ap.parse_args()
    adata = ad.read_h5ad(NORMAN)
    per_seed = {s: seed_scores(adata, int(s), args.models.split(",")) for s in args.seeds.split(",")}
    rows = next(iter(per_seed.values()))
    summary = {row: {c: [float(np.mean([p[row][c] for p in per_seed.values()])),
                         float(np.std([p[row][c] for p in per_seed.values()], ddof=1))]
                     for c in rows[row]} for row in rows}
    out = RESULTS / "norman_error_sources.json"
    out.write_text(json.dumps({"settings": "model ATE tables of results/norman (defaults); "
                                           "scored with score_ates (20 control halvings)",
                               "mean_sd": summary, "per_seed": per_seed}, indent=2))
    for row, cols in summary.items():
        print(f"{row:22s}", "  ".join(f"{c} {m:.3f} ± {s:.3f}" for c, (m, s) in cols.items()))


if __name__ == "__main__":
    main()
