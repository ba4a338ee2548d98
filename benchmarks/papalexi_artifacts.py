"""Latent vs observed artifact state on the Papalexi 2021 ECCITE-seq screen (THP-1).

Reads ../shared/data/papalexi2021_thp1_eccite_lowmoi.h5ad (unassigned cells
dropped), QC with the transcriptome-wide covariates and scrublet, and per seed
trains ``cradle`` with the observed artifact state (QC flags) and with
``artifact_state="latent"``. Reports, per seed:

- the latent posterior, abducted from the counts and QC together (``latent:counts+qc``)
  and from the QC evidence alone (``latent:qc``), against the flags: cells flagged, abducted as
  artifacts (P(any cause) ≥ 0.5), flagged but abducted clean, unflagged but
  abducted as artifacts, cells per most probable cause, and how many of the
  high-mitochondrial flagged cells each calls damaged;
- transcriptome-wide mitochondrial share (obs ``pct_counts_mt_transcriptome``)
  of each group: what the posterior calls damaged should be the
  high-mitochondrial cells;
- counterfactual cleaning, ``do(artifact=clean)``: the panel's mitochondrial
  share (its MT- genes) of the factual and cleaned expectations, for the
  high-mitochondrial flagged cells and for clean cells (which should not move);
- held-out ATE r of the two models against the data (test split, posterior
  means; the model's artifact handling changes what it learns of effects).

No truth exists here; the simulator benchmark (``latent_artifacts.py``) is
where the claims are checked. Writes benchmarks/results/papalexi_artifacts.json.

    python benchmarks/papalexi_artifacts.py [--seeds 0,1,2] [--epochs 30] [--threads 1]
"""

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, artifact_posterior, counterfactual, fit, posterior_ate
from cradle_pyro.inference.artifacts import ABDUCT_FROM, artifact_summary
from cradle_pyro.inference.scoring import held_out_conditions, score_ates, summarise_scores

ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = ROOT.parent / "shared" / "data" / "papalexi2021_thp1_eccite_lowmoi.h5ad"
QC_COLUMNS = {"low_total_counts": "total_counts_transcriptome",
              "low_n_genes": "n_genes_transcriptome",
              "high_pct_mt": "pct_counts_mt_transcriptome"}


def mt_share(x, mt):
    x = np.asarray(x)
    return x[:, mt].sum(1) / np.maximum(x.sum(1), 1e-8)


def one_seed(adata, seed, epochs, states=("observed", "latent")) -> dict:
    data = PerturbationData.from_anndata(adata, "perturbation", "non-targeting", doublets=True,
                                         seed=seed, qc_columns=QC_COLUMNS)
    pct_mt = adata.obs.loc[data.obs_names, "pct_counts_mt_transcriptome"].to_numpy(float)
    mt = np.array([g.startswith("MT-") for g in data.gene_names])
    flags = data.qc_flags.max(1) > 0
    high_mt = data.qc_flags[:, data.qc_flag_names.index("high_pct_mt")] > 0
    perts = held_out_conditions(data, "test")
    out = {"n_cells": data.n_cells, "flagged": int(flags.sum()), "high_mt_flagged": int(high_mt.sum()),
           "models": {}}
    means = {}
    for state in states:
        t0 = time.time()
        run = fit(data, TrainConfig(epochs=epochs, seed=seed, progress=False),
                  ModelConfig(artifact_state=state))
        fit_seconds = round(time.time() - t0, 1)
        variants = [f"latent:{a}" for a in ABDUCT_FROM] if state == "latent" else ["observed"]
        for variant in variants:
            abduct = variant.split(":")[1] if ":" in variant else "qc"
            entry = {"fit_seconds": fit_seconds}
            cf = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=2,
                                seed=seed, abduct_from=abduct)
            fa, cl = mt_share(cf.layers["factual_expected"], mt), mt_share(cf.layers["expected"], mt)
            observed = mt_share(data.counts.toarray(), mt)
            clean_cells = ~flags
            entry["panel_mt_share"] = {
                "high_mt_flagged": {"observed": float(observed[high_mt].mean()),
                                    "factual": float(fa[high_mt].mean()),
                                    "cleaned": float(cl[high_mt].mean())},
                "unflagged": {"observed": float(observed[clean_cells].mean()),
                              "factual": float(fa[clean_cells].mean()),
                              "cleaned": float(cl[clean_cells].mean())},
            }
            if state == "latent":
                post = artifact_posterior(run.model, run.guide, data, abduct_from=abduct, seed=seed)
                entry["posterior"] = artifact_summary(post)
                causes = [c for c in post.columns if c.startswith("p_") and c != "p_any"]
                top = post[causes].to_numpy().argmax(1)
                artifact = post["p_any"].to_numpy() >= 0.5
                damaged = (post["p_damaged"] >= 0.5).to_numpy()
                entry["cells_per_cause"] = {c[2:]: int(((top == j) & artifact).sum())
                                            for j, c in enumerate(causes)}
                entry["high_mt_flagged_called_damaged"] = int((high_mt & damaged).sum())
                entry["transcriptome_pct_mt"] = {
                    "abducted_damaged": float(pct_mt[damaged].mean()) if damaged.any() else None,
                    "flagged_but_clean": float(pct_mt[flags & ~artifact].mean()) if (flags & ~artifact).any() else None,
                    "unflagged_but_artifact": float(pct_mt[~flags & artifact].mean()) if (~flags & artifact).any() else None,
                    "abducted_clean": float(pct_mt[~artifact].mean()),
                }
            out["models"][variant] = entry
            print(seed, variant, json.dumps(entry), flush=True)
        # the effects are the fit's: the abduction of the artifact state does not enter them
        means[state] = posterior_ate(run.model, run.guide, data, perts, num_draws=30, n_cells=300,
                                     seed=seed).mean
    summary = summarise_scores(score_ates(means, data, perts, split="test", n_splits=10, seed=seed))
    out["held_out_ate"] = {k: {c: float(v) for c, v in row.items()} for k, row in
                           summary[["pearson_all", "pearson_top"]].iterrows()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--states", default="observed,latent")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "papalexi_artifacts.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(PAPALEXI)
    results = {"data": PAPALEXI.name, "epochs": args.epochs, "per_seed": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        results["per_seed"][seed] = one_seed(adata, seed, args.epochs, args.states.split(","))
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
