"""Recovery of known truth on the simulator: cradle vs sams.

Writes benchmarks/results/simulator_recovery.json. Run:
    python benchmarks/simulator_recovery.py [--epochs 40] [--seed 0]

Measures
- ATE Pearson r between the model's ATE (generated clean cells) and the true ATE
  of every condition (mean over conditions);
- AUROC of the model's artifact log-likelihood ratio against the injected truth;
- counterfactual artifact removal, for cells with an injected artifact: how well
  the predicted profile explains the cell's clean twin, as the multinomial
  cross-entropy per UMI of the twin under the predicted proportions (a proper
  score; lower is closer) and as RMSE in log1p(CP10k), for cradle's
  do(artifact=clean), cradle's factual reconstruction, sams's reconstruction
  and the observed cell (+0.5 pseudo-count);
- QC pass rate of generated clean cells judged by the thresholds learnt on data.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.counterfactuals import (artifact_log_likelihood_ratio, counterfactual,
                                       normalised_log_expression)
from cradle_pyro.inference.effects import model_ate, sample_cells
from cradle_pyro.inference.metrics import qc_pass_rate


def rmse_rows(a, b):
    return np.sqrt(((a - b) ** 2).mean(1))


def twin_cross_entropy(expected, twin):
    """Per cell: -sum_g (twin_g / sum twin) log p_g, p = predicted expression proportions.
    The multinomial log-loss per UMI of the clean twin under the prediction: a proper
    score that is not swamped by the twin's sampling noise. Lower is closer."""
    p = expected / expected.sum(1, keepdims=True)
    q = twin / np.maximum(twin.sum(1, keepdims=True), 1)
    return -(q * np.log(p + 1e-12)).sum(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beta", type=float, default=1.0, help="alignment weight for cradle")
    ap.add_argument("--artifact-kinds", default="any", choices=["any", "per-criterion"])
    ap.add_argument("--models", default="cradle,sams")
    ap.add_argument("--artifact-cells-only", action="store_true",
                    help="references for artifact cells only (the published choice)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulator_recovery.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    adata = simulate_screen(seed=args.seed)
    truth = adata.uns["truth"]
    conds = list(truth["ate_conditions"])
    data = PerturbationData.from_anndata(adata, doublets=True, seed=args.seed,
                                         artifact_kinds=args.artifact_kinds,
                                         reference_artifact_cells_only=args.artifact_cells_only)
    is_art = adata.obs["is_artifact"].to_numpy()
    labelled = data.artifact.max(1) > 0
    twin_counts = adata.layers["clean"].toarray()
    clean_twin = normalised_log_expression(twin_counts)
    observed = normalised_log_expression(adata.X)
    art_cells = np.flatnonzero(is_art)
    injected = adata.obs["artifact_kind"].to_numpy()
    result = {"data": {"n_cells": data.n_cells, "n_genes": data.n_genes,
                       "qc_label_precision": float((is_art & labelled).sum() / labelled.sum()),
                       "qc_label_recall": float((is_art & labelled).sum() / is_art.sum()),
                       "artifact_kinds": data.artifact_names},
              "beta": args.beta, "reference_artifact_cells_only": args.artifact_cells_only,
              "epochs": args.epochs, "seed": args.seed, "models": {}}
    for kind in args.models.split(","):
        t0 = time.time()
        run = fit(data, TrainConfig(epochs=args.epochs, seed=args.seed, progress=False, beta=args.beta),
                  ModelConfig(model=kind))
        train_s = time.time() - t0
        ate = model_ate(run.model, run.guide, data, conds, n_cells=1000, seed=args.seed)
        r = [np.corrcoef(ate.loc[c].to_numpy(), truth["ate"][i])[0, 1] for i, c in enumerate(conds)]
        cf = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=4, seed=args.seed)
        cf_expr = normalised_log_expression(cf.layers["expected"])
        fa_expr = normalised_log_expression(cf.layers["factual_expected"])
        llr = artifact_log_likelihood_ratio(run.model, run.guide, data, seed=args.seed) \
            if kind == "cradle" and data.n_artifacts == 1 else None
        gen = [sample_cells(run.model, run.guide, data, c, n=200, artifact="clean", seed=args.seed) for c in conds[:6]]
        pass_rate = float(np.mean([qc_pass_rate(data.qc_thresholds, g) for g in gen]))
        result["models"][kind] = {
            "train_seconds": round(train_s, 1), "best_epoch": int(run.best_epoch),
            "ate_pearson_vs_truth_mean": float(np.mean(r)), "ate_pearson_vs_truth_min": float(np.min(r)),
            "cf_clean_rmse_to_twin": float(rmse_rows(cf_expr[art_cells], clean_twin[art_cells]).mean()),
            "factual_rmse_to_twin": float(rmse_rows(fa_expr[art_cells], clean_twin[art_cells]).mean()),
            "cf_clean_twin_cross_entropy": float(twin_cross_entropy(
                cf.layers["expected"][art_cells], twin_counts[art_cells]).mean()),
            "factual_twin_cross_entropy": float(twin_cross_entropy(
                cf.layers["factual_expected"][art_cells], twin_counts[art_cells]).mean()),
            "cf_clean_twin_cross_entropy_by_kind": {
                k: float(twin_cross_entropy(cf.layers["expected"][injected == k], twin_counts[injected == k]).mean())
                for k in ("damaged", "doublet", "low_complexity")},
            "factual_twin_cross_entropy_by_kind": {
                k: float(twin_cross_entropy(cf.layers["factual_expected"][injected == k], twin_counts[injected == k]).mean())
                for k in ("damaged", "doublet", "low_complexity")},
            "qc_pass_rate_generated_clean": pass_rate,
        }
        if llr is not None:
            result["models"][kind]["artifact_llr_auroc_vs_truth"] = float(roc_auc_score(is_art, llr))
            result["models"][kind]["artifact_llr_auroc_vs_truth_doublets_vs_clean"] = float(roc_auc_score(
                is_art[(adata.obs.artifact_kind.isin(["doublet", "none"])).to_numpy()],
                llr[(adata.obs.artifact_kind.isin(["doublet", "none"])).to_numpy()]))
        print(kind, json.dumps(result["models"][kind]), flush=True)
    obs_counts = adata.X.toarray()
    result["observed_twin_cross_entropy"] = float(twin_cross_entropy(
        obs_counts[art_cells] + 0.5, twin_counts[art_cells]).mean())
    result["observed_rmse_to_twin"] = float(rmse_rows(observed[art_cells], clean_twin[art_cells]).mean())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
