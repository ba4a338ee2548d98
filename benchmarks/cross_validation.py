"""Five-fold cross-validated effects on Norman: a validation criterion with five times the cells.

The validation criterion of seen conditions (:class:`cradle_pyro.inference.selection.ValidationEffects`:
model ATE against the ATE of a condition's clean validation cells) scores the
single effects on cells the model never saw, which is where the held-out
doubles' error lies (``norman_error_sources.py``). With about ten validation
cells per condition it is too noisy to tell most settings apart. Here the
seen cells (everything but the five held-out doubles of the official split)
are dealt into five folds, stratified by condition
(:func:`cradle_pyro.inference.cross_validation.cross_validate`); each fold in turn is the
validation set of a run trained on the other four, so every seen cell
validates once. Per fold: validation MSE and r (all genes, mean over
conditions); a setting's score is their mean over folds, compared paired
(same folds) between settings. A setting changes TrainConfig fields and, under
``"model"``, ModelConfig fields.

The held-out doubles are the frozen test and are not scored here (one more run
per setting on the official split gives the seen singles' slope on the true
effect); ``norman_unseen_combinations.py`` scores the test split once a change
is decided.

Each seed and setting writes ``results/cross_validation/seed<k>/<setting>.json``
(run seeds and settings in parallel processes); ``--summarise`` gathers the
settings every seed has into ``results/cross_validation.json`` (mean ± sd over
seeds, and the paired difference of each setting from ``epochs100``, the first
defaults, from ``gene_effect_scale3``, the defaults after it, and from
``library_effects``, today's).

    python benchmarks/cross_validation.py --seeds 0 [--settings '{"epochs100": {}, ...}']
    python benchmarks/cross_validation.py --summarise
"""

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from cradle_pyro import ModelConfig
from gene_effects import NORMAN, NORMAN_SPLIT, RESULTS, held_out_scores, norman_data
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.cross_validation import cross_validate
from cradle_pyro.inference.effects import posterior_ate
from cradle_pyro.inference.scoring import single_conditions

FOLDS = 5
OUT = RESULTS / "cross_validation"
# "epochs100" ran as {} when 100 epochs were the default; spelt out so a rerun measures the same
DEFAULT_SETTINGS = {"epochs100": {"epochs": 100}, "epochs50": {"epochs": 50},
                    "epochs200": {"epochs": 200}}
# settings every other is compared with, fold by fold: the first defaults (100 epochs, direct-path
# scale 1.0; its files were written before the scale changed), the defaults after them (scale 3.0)
# and today's (library effects on as well)
REFERENCES = ("epochs100", "gene_effect_scale3", "library_effects")


def seed_scores(adata, seed, settings, threads):
    """Train and score each setting on ``seed``; writes ``OUT/seed<seed>/<setting>.json``."""
    torch.set_num_threads(threads)
    official = norman_data(adata, seed)
    for name, setting in settings.items():
        t0 = time.time()
        train = {k: v for k, v in setting.items() if k != "model"}
        model = ModelConfig(**setting.get("model", {}))
        folds = cross_validate(adata, TrainConfig(seed=seed, progress=False, **train), model,
                               folds=FOLDS, data_kwargs=NORMAN_SPLIT, seed=seed)  # test cells untouched
        run = fit(official, TrainConfig(seed=seed, progress=False, **train), model)
        test, singles = [], single_conditions(official)   # the test split stays frozen
        ate = posterior_ate(run.model, run.guide, official, singles, seed=seed).mean
        res = {f"cv_{k}": float(folds[k].mean()) for k in ("val_ate_mse", "val_ate_r", "val_ate_r_top")}
        res["cv_folds"], res["setting"] = folds.to_dict("records"), setting
        res.update(held_out_scores(ate, official, test, singles, seed))
        (OUT / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        (OUT / f"seed{seed}" / f"{name}.json").write_text(json.dumps(res, indent=2))
        print(seed, name, f"{time.time() - t0:.0f}s",
              {k: round(v, 4) for k, v in res.items() if isinstance(v, float)}, flush=True)


def summarise():
    per_seed = {}
    for path in sorted(OUT.glob("seed*/*.json")):
        per_seed.setdefault(path.parent.name.removeprefix("seed"), {})[path.stem] = \
            json.loads(path.read_text())
    first = next(iter(DEFAULT_SETTINGS))
    names = [first] + sorted(n for n in set().union(*per_seed.values()) if n != first)
    per_seed = {seed: res for seed, res in per_seed.items() if set(res) == set(names)}
    summary = {}
    for name in names:
        keys = [k for k, v in per_seed[next(iter(per_seed))][name].items() if isinstance(v, float)]
        summary[name] = {}
        for k in keys:
            vals = np.array([s[name][k] for s in per_seed.values()])
            summary[name][k] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1))}
            for ref in REFERENCES:  # settings run before a metric existed lack it
                if ref in names and all(k in s[ref] for s in per_seed.values()):
                    diff = vals - np.array([s[ref][k] for s in per_seed.values()])
                    summary[name][k][f"paired_minus_{ref}"] = [round(float(d), 4) for d in diff]
    path = RESULTS / "cross_validation.json"
    path.write_text(json.dumps({"settings": f"{FOLDS}-fold cross-validation over the seen cells "
                                            "of Norman's official split; each setting's changes "
                                            "to the defaults are in per_seed (setting)",
                                "seeds": list(per_seed), "mean_sd": summary,
                                "per_seed": per_seed}, indent=2))
    for name, cols in summary.items():
        print(name, {k: (round(v["mean"], 4), v.get(f"paired_minus_{REFERENCES[-1]}"))
                     for k, v in cols.items()})


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default=json.dumps(DEFAULT_SETTINGS),
                    help="setting name -> TrainConfig fields (and 'model': ModelConfig fields), "
                         "JSON; compared with epochs100 (the defaults)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarise", action="store_true")
    args = ap.parse_args()
    if args.summarise:
        return summarise()
    adata = ad.read_h5ad(NORMAN)
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_scores(adata, seed, json.loads(args.settings), args.threads)


if __name__ == "__main__":
    main()
