"""Artifacts as latent causes vs observed QC labels: counterfactual cleaning on the simulator.

For each seed, a simulated screen with clean twins (4,000 cells × 400 genes,
12 % injected artifacts: damaged, doublets, low-complexity; scrublet run so
its doublet score is a QC covariate) is fitted with the defaults:

- ``observed``: the artifact state is the k·MAD / scrublet flag;
- ``latent``: ``artifact_state="latent"``, flags and QC covariates as evidence;
  its artifact state is then abducted from ``--abduct-from`` (``counts+qc``:
  the counts and the QC evidence; ``qc``: the QC evidence alone), each from
  the same fit.

Screens (``--setting``):

- ``standard``: ``simulate_screen`` as it is (damage: every non-mitochondrial
  gene thinned to 25 %, mitochondrial counts doubled);
- ``overlap``: ``qc_overlap=1``: the mitochondrial share and library size also
  vary with the cell's biological state, so k·MAD flags clean cells and QC
  tails overlap between clean and damaged cells;
- ``signature``: ``damage_signature=1, qc_overlap=1``: besides, damage of
  varying severity with a gene-by-gene signature.

Every cell is then cleaned, ``counterfactual(..., artifact="clean")``, and per
group (each injected kind, all of its cells and those QC flagged / missed;
clean cells QC flagged by mistake; clean unflagged cells)
:func:`~cradle_pyro.inference.counterfactuals.cleaning_against_twins` reports the
mean squared error in log1p(CP10k) between the twin's expected clean profile
(``clean_expected``, noise-free) and the counterfactual expectation
(``cf_mse``) and the factual expectation (``factual_mse``), and ``ratio`` =
cf / factual; ``noisy_twin_ratio`` is the same against the twin's one noisy
draw (``clean``), where the twin's own count noise is a floor no cleaning
removes. Also the AUROC of the posterior artifact probability (latent) and of
the QC flags against the injected truth, per kind (that kind's cells vs truly
clean cells).

Writes benchmarks/results/latent_artifacts_<setting>.json.

    python benchmarks/latent_artifacts.py --setting overlap [--seeds 0,1,2] [--threads 1]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from sklearn.metrics import roc_auc_score

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, artifact_posterior, fit
from cradle_pyro.inference.counterfactuals import cleaning_against_twins, counterfactual

KINDS = ("damaged", "doublet", "low_complexity")
SETTINGS = {"standard": {}, "overlap": {"qc_overlap": 1.0},
            "signature": {"qc_overlap": 1.0, "damage_signature": 1.0}}


def cleaning_scores(run, data, adata, seed, abduct_from="counts+qc") -> dict:
    cf = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=4, seed=seed,
                        abduct_from=abduct_from)
    table = cleaning_against_twins(cf, adata)
    noisy = cleaning_against_twins(cf, adata, layer="clean")
    table["noisy_twin_ratio"] = noisy["ratio"]
    return table.to_dict(orient="index")


def _auroc(kind, score) -> dict:
    out = {}
    for k in KINDS:
        sel = (kind == k) | (kind == "none")
        out[k] = float(roc_auc_score(kind[sel] == k, score[sel]))
    out["any"] = float(roc_auc_score(kind != "none", score))
    return out


def detection_scores(run, data, adata, abduct_from="counts+qc") -> dict:
    kind = adata.obs["artifact_kind"].astype(str).reindex(data.obs_names).to_numpy()
    out = {"qc_flags": _auroc(kind, data.qc_flags.max(1) if data.qc_flags is not None
                              else data.artifact.max(1))}
    if run.model.config.latent_artifacts:
        post = artifact_posterior(run.model, run.guide, data, abduct_from=abduct_from)
        out["posterior"] = _auroc(kind, post["p_any"].to_numpy())
        for k in KINDS:
            sel = (kind == k) | (kind == "none")
            out["posterior"][f"{k}_own_cause"] = float(roc_auc_score(kind[sel] == k,
                                                                     post[f"p_{k}"][sel]))
    return out


def _mean_sd(values) -> list:
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="standard", choices=sorted(SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--states", default="observed,latent")
    ap.add_argument("--abduct-from", default="counts+qc,qc",
                    help="abductions of the latent state to score, each from the same fit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: the data-size rule")
    ap.add_argument("--evidence", default="covariates", help="artifact_evidence of the latent model")
    ap.add_argument("--artifact-effect-scale", type=float, default=None,
                    help="Normal prior scale of artifact_effect (default: the model's, 1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).resolve().parent / "results"
               / f"latent_artifacts_{args.setting}.json")
    results = {"screen": f"simulate_screen(n_cells=4000, n_genes=400, seed, keep_expected=True, "
                         f"**{SETTINGS[args.setting]}); scrublet on",
               "setting": args.setting, "epochs": args.epochs, "evidence": args.evidence,
               "artifact_effect_scale": args.artifact_effect_scale, "per_seed": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        adata = simulate_screen(n_cells=4000, n_genes=400, seed=seed, keep_expected=True,
                                **SETTINGS[args.setting])
        data = PerturbationData.from_anndata(adata, doublets=True, seed=seed)
        for state in args.states.split(","):
            t0 = time.time()
            priors = ({} if args.artifact_effect_scale is None else
                      {"artifact_effect": dist.Normal(0.0, args.artifact_effect_scale)})
            run = fit(data, TrainConfig(seed=seed, epochs=args.epochs, progress=False),
                      ModelConfig(artifact_state=state, priors=priors, **(
                          {"artifact_evidence": args.evidence} if state == "latent" else {})))
            fit_s = time.time() - t0
            variants = ([f"latent:{a}" for a in args.abduct_from.split(",")]
                        if state == "latent" else ["observed"])
            for variant in variants:
                abduct = variant.split(":")[1] if ":" in variant else "qc"
                res = {"cleaning": cleaning_scores(run, data, adata, seed, abduct),
                       "auroc": detection_scores(run, data, adata, abduct), "fit_s": fit_s}
                results["per_seed"].setdefault(variant, {})[seed] = res
                print(seed, variant, json.dumps({k: round(v["ratio"], 3)
                                                 for k, v in res["cleaning"].items()}),
                      json.dumps({k: round(v, 3) for k, v in
                                  res["auroc"].get("posterior", res["auroc"]["qc_flags"]).items()}),
                      flush=True)
    summary = {}
    for variant, seeds in results["per_seed"].items():
        rows = list(seeds.values())
        groups = set.intersection(*[set(r["cleaning"]) for r in rows])
        summary[variant] = {
            **{key: {g: _mean_sd([r["cleaning"][g][key] for r in rows]) for g in sorted(groups)}
               for key in ("ratio", "noisy_twin_ratio", "cf_mse", "factual_mse", "n")},
            **{f"auroc_{src}": {k: _mean_sd([r["auroc"][src][k] for r in rows])
                                for k in rows[0]["auroc"][src]}
               for src in rows[0]["auroc"]},
        }
    results["summary"] = summary
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
