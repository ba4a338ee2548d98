"""``cradle`` and the baselines on the held-out Norman doubles, scored by Arc Institute's cell-eval.

For each seed: Norman's official split (all five eligible doubles and half the
control cells held out), ``cradle`` trained with the defaults; then, through
:mod:`cradle_pyro.inference.predictions` (what ``cradle-pyro predict`` writes):

- the model's generated clean cells (200 per double and 200 control cells);
- each baseline's cells (additive, mean of perturbed cells, linear, no change:
  its ATE added to 200 training control cells);
- the truth: the held-out clean cells of the doubles and the held-out clean
  control cells, no cell any predictor trained on.

``cell-eval run --profile full`` scores every predictor against the truth,
and ``cell-eval run --ceiling`` without a prediction gives the truth's
split-half ceiling. Writes ``benchmarks/results/cell_eval_norman.json``
(per seed, per predictor: the mean over doubles of each metric; the ceiling
beside) and keeps cell-eval's own folders under
``benchmarks/results/cell_eval_norman/seed<k>/``. Needs the ``[eval]`` extra
(``pip install -e ".[eval]"``).

This scores the test split: run it once a change is decided.

    python benchmarks/cell_eval_norman.py --seeds 0,1,2
"""

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.baselines import BASELINES, baseline_ates
from cradle_pyro.inference.predictions import (CONTROL, PERT_COL, baseline_cells, observed_cells,
                                               predicted_cells)
from cradle_pyro.inference.scoring import held_out_conditions

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
OUT = ROOT / "benchmarks" / "results" / "cell_eval_norman"
METRICS = ["pearson_delta", "mae", "mae_delta", "discrimination_score_l1", "overlap_at_N",
           "de_direction_match"]
HIGHER_IS_BETTER = {"pearson_delta": True, "mae": False, "mae_delta": False,
                    "discrimination_score_l1": True, "overlap_at_N": True,
                    "de_direction_match": True}


def cell_eval(real: Path, pred: Path | None, out: Path, threads: int) -> pd.DataFrame:
    """Run cell-eval; its per-metric means over perturbations (``agg_*results.csv``)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = ["cell-eval", "run", "-ar", str(real), "--profile", "full", "-o", str(out),
           "--num-threads", str(threads), "--pert-col", PERT_COL, "--control-pert", CONTROL]
    cmd += ["-ap", str(pred)] if pred else ["--ceiling"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cell-eval failed: {done.stderr[-2000:]}")
    agg = pd.read_csv(out / ("agg_results.csv" if pred else "agg_ceiling_results.csv"))
    if "statistic" not in agg.columns:   # the ceiling's file holds one row: the means
        agg.index = ["mean"]
        return agg
    return agg.set_index("statistic")


def run_seed(adata, seed, n, threads) -> dict:
    data = PerturbationData.from_anndata(adata, split="unseen-combinations", heldout_fraction=1.0,
                                         seed=seed)
    doubles = [c for c in held_out_conditions(data) if data.separator in c]
    folder = OUT / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = fit(data, TrainConfig(seed=seed, progress=False), ModelConfig())
    seconds = round(time.time() - t0, 1)
    files = {"real": folder / "real.h5ad"}
    observed_cells(data, doubles).write_h5ad(files["real"])
    files["cradle"] = folder / "cradle.h5ad"
    predicted_cells(run.model, run.guide, data, doubles, n=n, seed=seed).write_h5ad(files["cradle"])
    for name, table in baseline_ates(data, doubles).items():
        files[name] = folder / f"{name}.h5ad"
        baseline_cells(data, table, n=n, seed=seed, name=name).write_h5ad(files[name])
    scores = {}
    for name in ["cradle", *BASELINES]:
        agg = cell_eval(files["real"], files[name], folder / name, threads)
        scores[name] = {m: _f(agg.loc["mean", m]) for m in METRICS if m in agg.columns}
        print(seed, name, {k: round(v, 4) for k, v in scores[name].items() if v is not None},
              flush=True)
    ceiling = cell_eval(files["real"], None, folder / "ceiling", threads)
    scores["ceiling"] = {m: _f(ceiling.loc["mean", m]) for m in METRICS if m in ceiling.columns}
    for path in files.values():   # the h5ad files are large and rebuilt from the seed
        path.unlink()
    return {"scores": scores, "held_out": doubles, "train_seconds": seconds,
            "cells_per_condition": n}


def _f(v):
    return None if v is None or not np.isfinite(v) else float(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=200, help="predicted cells per condition")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(NORMAN)
    path = OUT.with_suffix(".json")
    per_seed = json.loads(path.read_text())["per_seed"] if path.exists() else {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        per_seed[str(seed)] = run_seed(adata, seed, args.n, args.threads)
        names = list(per_seed[str(seed)]["scores"])
        wins = {m: {s: all(_better(res["scores"]["cradle"].get(m), res["scores"][b].get(m), m)
                           for b in ("additive", "mean"))
                    for s, res in per_seed.items()} for m in METRICS}
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        path.write_text(json.dumps({
            "data": NORMAN.name, "commit": commit,
            "settings": "cradle-pyro train defaults; cell-eval run --profile full; truth from "
                        "held-out cells only (doubles and half the controls)",
            "cradle_ahead_of_additive_and_mean": wins,
            "mean_over_seeds": {n: {m: _mean([r["scores"][n].get(m) for r in per_seed.values()])
                                    for m in METRICS} for n in names},
            "per_seed": per_seed}, indent=2))
    print(path.read_text()[:2500])


def _better(a, b, metric) -> bool:
    if a is None or b is None:
        return False
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def _mean(values):
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


if __name__ == "__main__":
    main()
