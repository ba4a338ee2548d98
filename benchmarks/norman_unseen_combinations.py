"""Held-out unseen combinations on the Norman 2019 subset: cradle, sams and the additive baseline.

Reads ../shared/data/norman2019_k562_crispra_subset.h5ad (never copied into the repository),
holds out 25 % (``--heldout-fraction``) of the doubles whose singles are seen, trains each model and writes the
evaluation report (metrics.json, report.md, figures) to benchmarks/results/norman/.

    python benchmarks/norman_unseen_combinations.py [--epochs 60] [--seed 0]
"""

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import torch

from cradle_pyro import ModelConfig, PerturbationData
from inference import TrainConfig, fit
from inference.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="cradle,sams")
    ap.add_argument("--heldout-fraction", type=float, default=0.25,
                    help="share of eligible combinations held out (the subset has 5 eligible)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "norman"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = PerturbationData.from_anndata(
        ad.read_h5ad(NORMAN), "perturbation", "control", doublets=False,
        qc_columns={"low_total_counts": "total_counts_transcriptome",
                    "low_n_genes": "n_genes_transcriptome"},
        split="unseen-combinations", heldout_fraction=args.heldout_fraction, seed=args.seed)
    runs, seconds = {}, {}
    for kind in args.models.split(","):
        t0 = time.time()
        runs[kind] = fit(data, TrainConfig(epochs=args.epochs, seed=args.seed, progress=False),
                         ModelConfig(model=kind))
        seconds[kind] = round(time.time() - t0, 1)
    report = evaluate(runs, data, args.out, split="test", n_cells=1000, seed=args.seed, progress=False)
    report["train_seconds"] = seconds
    report["artifact_share"] = float(data.artifact.mean())
    Path(args.out, "metrics.json").write_text(json.dumps(report, indent=2))
    for name, m in report["models"].items():
        print(name, json.dumps(m["ate"]), m.get("ate_combinations", ""))


if __name__ == "__main__":
    main()
