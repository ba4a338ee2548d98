"""Norman 2019's unseen doubles: predicted genetic interactions against observed ones, on equal terms.

Reads ../shared/data/norman2019_k562_crispra_subset.h5ad (never copied into the repository).
Split, per seed: the five eligible doubles are held out (all their cells), and so are half
of the control cells and half of the cells of every single in those doubles (seeded). So the
observed interaction of A+B, ``mean(A+B) − mean(A) − mean(B) + mean(control)`` (log2 CP10k,
clean cells), is built only from cells no predictor trained on. ``cradle`` trains with the
default settings on the rest.

Per double and gene, against the observed interaction:

- ``cradle``: the posterior mean interaction from ``interaction_posterior`` (the batched query
  engine at its defaults, 200 draws × 8 cells; and the sampled estimator at 200 × 500);
- ``no interaction``: 0 everywhere, the field's bar (Ahlmann-Eltze et al. 2025);
- ``ceiling``: the observed interaction's own noise. Each of the four groups of cells is
  halved, and the two half-interactions give a split-half reliability (Spearman-Brown) for r.
  For MSE the floor is the expected MSE of a perfect predictor, the noise variance of the
  observed interaction, estimated as ``mean((I1 − I2)²) / 4``.

Scored over the genes expressed in the screen and over each double's 20 genes of largest
|observed double ATE| (chosen on the held-out cells of the double and control).

The same runs check the engine against the sampled estimator: r of the double's predicted ATE
with the observed one (held-out double minus held-out control) for engine seeds 0, 1, 2 and
sampled seeds 0, 1.

Run: python benchmarks/norman_interactions.py [--seeds 0,1,2]
→ benchmarks/results/norman_interactions.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
OUT = ROOT / "benchmarks" / "results" / "norman_interactions.json"
TOP = 20


def fair_split(adata, seed):
    """train/val/test per cell: held-out doubles, half the controls, half of their singles' cells."""
    from cradle_pyro.splits import make_split, targets_of

    conditions = adata.obs["perturbation"].astype(str).to_numpy()
    split = make_split(conditions, "unseen-combinations", control_label="control",
                       heldout_fraction=1.0, seed=seed)
    doubles = sorted({c for c, s in zip(conditions, split) if s == "test"})
    singles = sorted({t for d in doubles for t in targets_of(d, "control", "+")})
    rng = np.random.default_rng(seed + 1000)
    for group in ["control", *singles]:
        cells = np.flatnonzero(conditions == group)
        split[rng.choice(cells, len(cells) // 2, replace=False)] = "test"
    return split, doubles


def _means(x, groups, rng=None):
    """Mean log-normalised expression of each group of rows; with ``rng`` also of two halves."""
    if rng is None:
        return [x[g].mean(0) for g in groups]
    halves = []
    for g in groups:
        perm = rng.permutation(g)
        halves.append((x[perm[: len(g) // 2]].mean(0), x[perm[len(g) // 2:]].mean(0)))
    return halves


def observed(data, doubles, seed):
    """Observed interaction and double ATE per double (held-out clean cells), with split halves."""
    from cradle_pyro.inference.effects import clean_mask, perturbseq_normalise
    from cradle_pyro.splits import targets_of

    conditions = np.asarray(data.conditions)
    test = (data.split == "test") & clean_mask(data)
    rng = np.random.default_rng(seed)
    out = {}
    for d in doubles:
        a, b = targets_of(d, data.control_label, data.separator)
        groups = [np.flatnonzero(test & (conditions == c)) for c in (d, a, b, data.control_label)]
        rows = np.concatenate(groups)
        x = perturbseq_normalise(data.counts[rows])
        local, start = [], 0
        for g in groups:
            local.append(np.arange(start, start + len(g)))
            start += len(g)
        ab, ma, mb, mc = _means(x, local)
        inter = ab - ma - mb + mc
        splits = []
        for _ in range(20):
            h = _means(x, local, rng)
            i1 = h[0][0] - h[1][0] - h[2][0] + h[3][0]
            i2 = h[0][1] - h[1][1] - h[2][1] + h[3][1]
            splits.append((i1, i2))
        out[d] = {"interaction": inter, "ate": ab - mc, "halves": splits,
                  "cells": [len(g) for g in groups]}
    return out


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def score(pred, obs, genes):
    """r and MSE of ``pred`` on the observed interaction over ``genes``, with the ceiling."""
    o = obs["interaction"][genes]
    r_half = np.mean([_pearson(i1[genes], i2[genes]) for i1, i2 in obs["halves"]])
    noise = np.mean([np.mean((i1[genes] - i2[genes]) ** 2) / 4 for i1, i2 in obs["halves"]])
    return {"r_model": _pearson(pred[genes], o), "mse_model": float(np.mean((pred[genes] - o) ** 2)),
            "mse_no_interaction": float(np.mean(o ** 2)),
            "ceiling_r": float(2 * r_half / (1 + r_half)), "ceiling_mse": float(noise)}


def main():
    import anndata as ad
    import torch

    from cradle_pyro import PerturbationData
    from cradle_pyro.inference import TrainConfig, fit
    from cradle_pyro.inference.effects import posterior_ate
    from cradle_pyro.inference.interactions import interaction_posterior
    from cradle_pyro.inference.screen_queries import batched_ate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(NORMAN)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    report = {"commit": commit, "data": NORMAN.name, "threads": args.threads,
              "settings": {"train": "TrainConfig() defaults, seed varies",
                           "engine": "interaction_posterior defaults (batched, 200 draws x 8 cells)",
                           "sampled": "200 draws x 500 cells"},
              "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        split, doubles = fair_split(adata, seed)
        adata.obs["fair_split"] = split
        data = PerturbationData.from_anndata(adata, "perturbation", "control", split="fair_split",
                                             seed=seed)
        t0 = time.time()
        run = fit(data, TrainConfig(seed=seed, progress=False))
        train_s = time.time() - t0
        obs = observed(data, doubles, seed)
        expressed = np.asarray(data.counts.sum(0)).ravel() > 0
        result = {"doubles": doubles, "train_seconds": round(train_s, 1),
                  "cells_double_a_b_control": {d: obs[d]["cells"] for d in doubles}}
        for name, kw in {"engine": {}, "sampled": {"estimator": "sampled"}}.items():
            t0 = time.time()
            post = interaction_posterior([run], data, doubles, seed=seed, **kw)
            seconds = time.time() - t0
            mean = post.mean
            rows = []
            for d in doubles:
                top = np.argsort(-np.abs(obs[d]["ate"]))[:TOP]
                rows.append({"double": d, "expressed": score(mean.loc[d].to_numpy(), obs[d],
                                                             expressed),
                             "top20": score(mean.loc[d].to_numpy(), obs[d], top)})
            result[f"interactions_{name}"] = {"per_double": rows, "seconds": round(seconds, 1),
                                              "mean": _average(rows)}
        # engine vs sampled: r of the doubles' ATE with the observed, per posterior seed
        truth = np.stack([obs[d]["ate"] for d in doubles])
        r_of = {}
        for name, fn, seeds in (("engine", batched_ate, (0, 1, 2)), ("sampled", posterior_ate, (0, 1))):
            for s in seeds:
                ate = fn(run.model, run.guide, data, doubles, seed=100 + s).mean.to_numpy()
                tops = [np.argsort(-np.abs(t))[:TOP] for t in truth]
                r_of[f"{name}_seed{s}"] = {
                    "r_all": float(np.mean([_pearson(p[expressed], t[expressed])
                                            for p, t in zip(ate, truth)])),
                    "r_top20": float(np.mean([_pearson(p[k], t[k])
                                              for p, t, k in zip(ate, truth, tops)]))}
        result["double_ate_r_by_estimator_and_seed"] = r_of
        report["seeds"][str(seed)] = result
        print(seed, json.dumps({k: result[f"interactions_{k}"]["mean"] for k in ("engine", "sampled")}),
              json.dumps(r_of), flush=True)
    OUT.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {OUT}")


def _average(rows):
    return {part: {k: float(np.nanmean([r[part][k] for r in rows])) for k in rows[0][part]}
            for part in ("expressed", "top20")}


if __name__ == "__main__":
    main()
