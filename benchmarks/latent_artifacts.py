"""Artifacts as latent causes vs observed QC labels: counterfactual cleaning on the simulator.

For each seed, a simulated screen with clean twins (4,000 cells × 400 genes,
12 % injected artifacts: damaged, doublets, low-complexity; scrublet run so
its doublet score is a QC covariate) is fitted twice with the defaults:

- ``observed``: the artifact state is the k·MAD / scrublet flag (today's default);
- ``latent``: ``artifact_state="latent"``, flags and QC covariates as evidence.

Every cell is then cleaned, ``counterfactual(..., artifact="clean")``, and per
group (each injected kind, all of its cells and those QC flagged / missed;
clean cells QC flagged by mistake; clean unflagged cells) we report the mean
squared error in log1p(CP10k) between the clean twin and the counterfactual
expectation (``cf_mse``) and the factual expectation (``factual_mse``), and
``ratio`` = cf / factual. The twin is one noisy draw, so both MSEs share a
floor that no cleaning can remove: ``twin_noise`` is the MSE between the twin's
own expected profile and the twin. ``expected_ratio`` compares against the
twin's expected profile instead (noise-free). Also the AUROC of the posterior artifact probability
(latent) or of the QC flag (observed) against the injected truth, per kind
(that kind's cells vs truly clean cells).

Writes benchmarks/results/latent_artifacts.json.

    python benchmarks/latent_artifacts.py [--seeds 0,1,2] [--threads 1]
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
from cradle_pyro.inference.counterfactuals import counterfactual, normalised_log_expression

KINDS = ("damaged", "doublet", "low_complexity")


def cleaning_scores(run, data, adata, seed) -> dict:
    cf = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=4, seed=seed)
    twin = normalised_log_expression(adata[cf.obs_names].layers["clean"])
    twin_mean = normalised_log_expression(adata[cf.obs_names].layers["clean_expected"])
    kind = adata.obs.loc[cf.obs_names, "artifact_kind"].astype(str).to_numpy()
    flagged = cf.obs["observed_artifact"].to_numpy() > 0
    cf_log = normalised_log_expression(cf.layers["expected"])
    fa_log = normalised_log_expression(cf.layers["factual_expected"])
    cf_mse, fa_mse = ((cf_log - twin) ** 2).mean(1), ((fa_log - twin) ** 2).mean(1)
    cf_emse, fa_emse = ((cf_log - twin_mean) ** 2).mean(1), ((fa_log - twin_mean) ** 2).mean(1)
    noise = ((twin_mean - twin) ** 2).mean(1)
    groups = {}
    for k in KINDS:
        groups[k] = kind == k
        groups[f"{k}_flagged"] = (kind == k) & flagged
        groups[f"{k}_missed"] = (kind == k) & ~flagged
    groups["clean_flagged_by_qc"] = (kind == "none") & flagged
    groups["clean_unflagged"] = (kind == "none") & ~flagged
    out = {}
    for name, sel in groups.items():
        if sel.sum():
            out[name] = {"n": int(sel.sum()), "cf_mse": float(cf_mse[sel].mean()),
                         "factual_mse": float(fa_mse[sel].mean()),
                         "ratio": float(cf_mse[sel].mean() / fa_mse[sel].mean()),
                         "twin_noise": float(noise[sel].mean()),
                         "cf_expected_mse": float(cf_emse[sel].mean()),
                         "factual_expected_mse": float(fa_emse[sel].mean()),
                         "expected_ratio": float(cf_emse[sel].mean() / fa_emse[sel].mean())}
    return out


def detection_scores(run, data, adata) -> dict:
    kind = adata.obs["artifact_kind"].astype(str).reindex(data.obs_names).to_numpy()
    if run.model.config.latent_artifacts:
        post = artifact_posterior(run.model, run.guide, data)
        own = {k: post[f"p_{k}"].to_numpy() for k in KINDS if f"p_{k}" in post}
        score = post["p_any"].to_numpy()
    else:
        score, own = data.artifact.max(1), {}
    out = {}
    for k in KINDS:
        sel = (kind == k) | (kind == "none")
        out[k] = float(roc_auc_score(kind[sel] == k, score[sel]))
        if k in own:
            out[f"{k}_own_cause"] = float(roc_auc_score(kind[sel] == k, own[k][sel]))
    out["any"] = float(roc_auc_score(kind != "none", score))
    return out


def _mean_sd(values) -> list:
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--states", default="observed,latent")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--evidence", default="covariates", help="artifact_evidence of the latent model")
    ap.add_argument("--artifact-effect-scale", type=float, default=None,
                    help="Normal prior scale of artifact_effect (default: the model's, 1)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "latent_artifacts.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"screen": "simulate_screen(n_cells=4000, n_genes=400, seed); scrublet on",
               "epochs": args.epochs, "evidence": args.evidence,
               "artifact_effect_scale": args.artifact_effect_scale, "per_seed": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        adata = simulate_screen(n_cells=4000, n_genes=400, seed=seed, keep_expected=True)
        data = PerturbationData.from_anndata(adata, doublets=True, seed=seed)
        for state in args.states.split(","):
            t0 = time.time()
            priors = ({} if args.artifact_effect_scale is None else
                      {"artifact_effect": dist.Normal(0.0, args.artifact_effect_scale)})
            run = fit(data, TrainConfig(seed=seed, epochs=args.epochs, progress=False),
                      ModelConfig(artifact_state=state, priors=priors, **(
                          {"artifact_evidence": args.evidence} if state == "latent" else {})))
            res = {"cleaning": cleaning_scores(run, data, adata, seed),
                   "auroc": detection_scores(run, data, adata), "fit_s": time.time() - t0}
            results["per_seed"].setdefault(state, {})[seed] = res
            print(seed, state, json.dumps({k: round(v["ratio"], 3) for k, v in res["cleaning"].items()}),
                  json.dumps({k: round(v, 3) for k, v in res["auroc"].items()}), flush=True)
    summary = {}
    for state, seeds in results["per_seed"].items():
        rows = list(seeds.values())
        groups = set.intersection(*[set(r["cleaning"]) for r in rows])
        summary[state] = {
            **{key: {g: _mean_sd([r["cleaning"][g][key] for r in rows]) for g in sorted(groups)}
               for key in ("ratio", "expected_ratio", "cf_mse", "factual_mse", "twin_noise")},
            "auroc": {k: _mean_sd([r["auroc"][k] for r in rows]) for k in rows[0]["auroc"]},
        }
    results["summary"] = summary
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
