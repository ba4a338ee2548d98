"""The variational posterior against NUTS on the same model, networks fixed.

On a small screen drawn from the model's prior predictive (the SBC screens of
``benchmarks/sbc.py``) a ``cradle`` run is fitted at the defaults. Its decoder
and dispersion are then held fixed and every other latent (effects, direct
gene and library effects, every cell's basal state) is sampled with NUTS
(``pyro.infer.MCMC``) on the same Pyro model, with the mask fixed at the
guide's mode (NUTS needs continuous latents, and the guide's mask is nearly
deterministic on these screens). Both posteriors give the ATE of every
(perturbation, gene) over new cells from the prior (``basal="prior"``), with the
same number of draws and generated cells, through the same
:func:`cradle_pyro.inference.posterior_ate`; NUTS's draws enter as a guide that
replays them (:class:`Replayed`).

Reported per seed: the median ratio of the 90 % interval widths (variational
over NUTS), the coverage of the true ATE by each, and the same with the
generating decoder in place of the fitted one (``oracle``: inference alone,
no decoder error).

Writes benchmarks/results/nuts_reference.json.

    python benchmarks/nuts_reference.py [--seeds 0,1,2] [--warmup 300] [--samples 300]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit, posterior_ate
from sbc import CONFIG, commit, draw_screen, interval_stats, oracle_model

ROOT = Path(__file__).resolve().parents[1]
UNPLATED = {"decoder_weight"}   # the other globals live in one plate (perturbations, kinds)


class Replayed:
    """A guide whose global latents are MCMC draws: each particle replays one draw.

    ``samples`` maps each global site to its draws (``num_samples`` × site shape).
    Cell-level sites are left to the model (new cells from the prior).
    """

    def __init__(self, samples: dict, seed: int = 0):
        self.samples = samples
        self.n = len(next(iter(samples.values())))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *args, **kwargs):
        frames = [f for f in poutine.runtime.get_plates() if f.name == "particles"]
        size = frames[0].size if frames else 1
        pick = torch.randint(self.n, (size,), generator=self.generator)
        for site, draws in self.samples.items():
            value = draws[pick]                              # particles × site shape
            if site in UNPLATED:                             # batch: particles, 1
                value = value.unsqueeze(1)
            event_dim = value.dim() - 2                      # batch: particles, plate
            pyro.sample(site, dist.Delta(value if frames else value[0], event_dim=event_dim))


def nuts_globals(model, batch, mask, warmup, samples, seed):
    """NUTS draws of the model's global latents with the mask fixed (networks are constants)."""
    conditioned = poutine.condition(model, data={"mask": mask})
    kwargs = dict(counts=batch.counts, dosage=batch.dosage, artifact=batch.artifact,
                  library=batch.library)
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(conditioned, target_accept_prob=0.8, max_tree_depth=6),
                num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(**kwargs)
    draws = mcmc.get_samples()
    diag = {k: {"r_hat": float(v["r_hat"].max()) if "r_hat" in v else None,
                "n_eff_min": float(v["n_eff"].min())}
            for k, v in mcmc.diagnostics().items() if isinstance(v, dict) and "n_eff" in v}
    keep = {k: v.detach() for k, v in draws.items() if k != "basal"}
    keep["mask"] = mask.expand(samples, *mask.shape)
    return keep, diag


def compare(run, data, names, ate, args, seed):
    """VI and NUTS intervals of one fitted model (its networks fixed for NUTS)."""
    train = data.batch(data.indices("train"))
    mask = (run.guide.mask_logits.detach() > 0).float()
    for p in run.model.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    samples, diag = nuts_globals(run.model, train, mask, args.warmup, args.samples, seed)
    seconds = time.time() - t0
    common = dict(num_draws=args.draws, n_cells=args.n_cells, seed=seed, basal="prior")
    vi = posterior_ate(run.model, run.guide, data, names, **common)
    mc = posterior_ate(run.model, Replayed(samples, seed), data, names, **common)
    vi_stats, vi_w = interval_stats(vi, ate)
    mc_stats, mc_w = interval_stats(mc, ate)
    return {"variational": vi_stats, "nuts": mc_stats,
            "width_ratio_median": float(np.median(vi_w / mc_w)),
            "mean_abs_difference_of_means": float(np.abs(vi.draws.mean(1) - mc.draws.mean(1)).mean()),
            "nuts_seconds": round(seconds, 1), "nuts_diagnostics": diag}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--draws", type=int, default=200, help="posterior draws per ATE")
    ap.add_argument("--n-cells", type=int, default=300)
    ap.add_argument("--genes", type=int, default=40)
    ap.add_argument("--perturbations", type=int, default=3)
    ap.add_argument("--cells", type=int, default=40, help="cells per condition")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bayesian-decoder", action="store_true",
                    help="the fitted model's decoder output layer is a latent (NUTS samples it too)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nuts_reference.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        rep_seed = 2000 + seed
        adata, names, ate, truth_model = draw_screen(rep_seed, args.genes, args.perturbations,
                                                     args.cells, CONFIG)
        data = PerturbationData.from_anndata(adata, artifact="clean", seed=rep_seed)
        tc = TrainConfig(seed=rep_seed, progress=False, threads=args.threads)
        fitted = fit(data, tc, ModelConfig(**dict(CONFIG, bayesian_decoder=args.bayesian_decoder)))
        oracle = fit(data, tc, ModelConfig(**CONFIG), model=oracle_model(data, truth_model, CONFIG))
        results[seed] = {"fitted_decoder": compare(fitted, data, names, ate, args, seed),
                         "oracle_decoder": compare(oracle, data, names, ate, args, seed)}
        print(seed, json.dumps({k: {m: v[m] for m in ("variational", "nuts", "width_ratio_median")}
                                for k, v in results[seed].items()}), flush=True)
    out = {"settings": {"model": dict(CONFIG, bayesian_decoder=args.bayesian_decoder),
                        "train": "TrainConfig defaults", "max_tree_depth": 6, "warmup": args.warmup,
                        "samples": args.samples, "draws": args.draws, "n_cells": args.n_cells,
                        "genes": args.genes, "perturbations": args.perturbations,
                        "cells_per_condition": args.cells, "mask": "fixed at the guide's mode"},
           "commit": commit(), "per_seed": results}
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
