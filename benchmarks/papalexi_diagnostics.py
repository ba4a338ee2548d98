"""ArviZ diagnostics on the Papalexi 2021 ECCITE-seq screen: PSIS k-hat and cradle vs sams.

Reads ../shared/data/papalexi2021_thp1_eccite_lowmoi.h5ad (unassigned cells dropped), labels
artifacts with transcriptome-wide covariates and scrublet, trains cradle and sams, and writes
benchmarks/results/papalexi/{diagnostics.json, compare.csv, khat_<model>.csv}.

    python benchmarks/papalexi_diagnostics.py [--epochs 30] [--seed 0]
"""

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.diagnostics import compare, psis_khat, to_arviz

ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = ROOT.parent / "shared" / "data" / "papalexi2021_thp1_eccite_lowmoi.h5ad"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "papalexi"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = PerturbationData.from_anndata(
        ad.read_h5ad(PAPALEXI), "perturbation", "non-targeting", doublets=True, seed=args.seed,
        qc_columns={"low_total_counts": "total_counts_transcriptome",
                    "low_n_genes": "n_genes_transcriptome",
                    "high_pct_mt": "pct_counts_mt_transcriptome"})
    result = {"n_cells": data.n_cells, "artifact_share": float(data.artifact.mean()), "models": {}}
    idatas = {}
    for kind in ("cradle", "sams"):
        t0 = time.time()
        run = fit(data, TrainConfig(epochs=args.epochs, seed=args.seed, progress=False), ModelConfig(model=kind))
        k = psis_khat(run, data, n_cells=1000, num_particles=200, seed=args.seed)
        np.savetxt(out / f"khat_{kind}.csv", k["khat_per_cell"], delimiter=",", header="khat", comments="")
        q = np.quantile(k["khat_per_cell"], [0.1, 0.25, 0.5, 0.75, 0.9])
        result["models"][kind] = {
            "train_seconds": round(time.time() - t0, 1), "best_epoch": int(run.best_epoch),
            "khat_quantiles_10_25_50_75_90": [round(float(v), 3) for v in q],
            "khat_share_below_0.7": k["share_below_0.7"], "khat_overall": k["khat_overall"]}
        idatas[kind] = to_arviz([run], data, n_cells=300, num_draws=50, num_inner=10, seed=args.seed)
        print(kind, result["models"][kind], flush=True)
    table = compare(idatas)
    table.to_csv(out / "compare.csv")
    result["compare"] = table[["rank", "elpd_loo", "p_loo", "elpd_diff", "se", "dse", "weight",
                               "warning"]].reset_index().to_dict(orient="records")
    (out / "diagnostics.json").write_text(json.dumps(result, indent=2, default=str))
    print(table)


if __name__ == "__main__":
    main()
