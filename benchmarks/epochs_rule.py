"""Epochs chosen from the number of training cells: what the rule picks, and what it costs.

For each screen: the training cells of its default split, the epochs the rule chooses
(``cradle_pyro.inference.train.epochs_for``) against the fixed 200 of the previous default,
the measured seconds of one training epoch at the defaults (one thread; (3 epochs − 1) / 2,
so set-up is not counted), and the estimated
wall time of the whole training either way. Norman (its official split, 3 seeds) and the
simulated screens the accuracy benchmarks use are checked to get exactly the previous
default (200): their scores under the rule are therefore the ones in docs/measurements.md,
seed for seed. Epoch times for 100,000 and 1,000,000 cells are read from
``results/scale.json`` (2,000 genes, measured there).

Run: python benchmarks/epochs_rule.py  →  benchmarks/results/epochs_rule.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "epochs_rule.json"
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"


def epoch_seconds(data) -> float:
    """Seconds of one epoch without the set-up: (3 epochs − 1 epoch) / 2."""
    from cradle_pyro.inference import TrainConfig, fit

    took = {}
    for epochs in (1, 3):
        started = time.perf_counter()
        fit(data, TrainConfig(epochs=epochs, progress=False, threads=1))
        took[epochs] = time.perf_counter() - started
    return (took[3] - took[1]) / 2


def row(name, data, measure=True) -> dict:
    from cradle_pyro.inference.train import epochs_for

    n = len(data.indices("train"))
    chosen = epochs_for(n)
    out = {"screen": name, "cells": int(data.n_cells), "genes": int(data.n_genes),
           "training_cells": int(n), "epochs_rule": chosen, "epochs_before": 200}
    if measure:
        seconds = epoch_seconds(data)
        out.update(epoch_seconds=round(seconds, 2),
                   minutes_rule=round(chosen * seconds / 60, 1),
                   minutes_before=round(200 * seconds / 60, 1))
    return out


def main():
    import anndata as ad

    from cradle_pyro import PerturbationData, simulate_screen

    torch.set_num_threads(1)
    rows = []
    for seed in range(3):
        if NORMAN.exists():
            norman = PerturbationData.from_anndata(  # as benchmarks/norman_unseen_combinations.py
                ad.read_h5ad(NORMAN), "perturbation", "control", split="unseen-combinations",
                heldout_fraction=1.0, seed=seed)
            rows.append(row(f"Norman official split, seed {seed}", norman, measure=seed == 0))
            del norman
        sim = PerturbationData.from_anndata(simulate_screen(n_cells=3000, n_genes=500, seed=seed),
                                            split="unseen-combinations", doublets=False, seed=seed)
        rows.append(row(f"simulated 3,000 x 500, seed {seed}", sim, measure=seed == 0))
    big = PerturbationData.from_anndata(simulate_screen(n_cells=40_000, n_genes=300, seed=0),
                                        doublets=False)
    rows.append(row("simulated 40,000 x 300", big))
    from cradle_pyro.inference.train import epochs_for

    scale = json.loads((ROOT / "benchmarks" / "results" / "scale.json").read_text())
    for size in scale["sizes"]:
        if size.get("counts_on_disk") or "epoch" not in size:
            continue
        n, seconds = size["n_cells"], size["epoch"]["seconds"]
        chosen = epochs_for(int(0.8 * n))
        rows.append({"screen": f"scale.json {n:,} x {size['n_genes']:,} (epoch time from there)",
                     "cells": n, "genes": size["n_genes"], "training_cells": int(0.8 * n),
                     "epochs_rule": chosen, "epochs_before": 200, "epoch_seconds": seconds,
                     "minutes_rule": round(chosen * seconds / 60, 1),
                     "minutes_before": round(200 * seconds / 60, 1)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    unchanged = all(r["epochs_rule"] == 200 for r in rows if r["screen"].startswith(("Norman", "simulated 3,000")))
    report = {"commit": commit,
              "settings": {"rule": "min(200, max(10, round(200 * 20000 / training cells)))",
                           "threads": 1, "defaults": "TrainConfig() except epochs"},
              "accuracy_screens_unchanged": unchanged, "rows": rows}
    OUT.write_text(json.dumps(report, indent=2))
    for r in rows:
        print(r)
    print(f"Norman and simulator screens keep 200 epochs: {unchanged}; wrote {OUT}")


if __name__ == "__main__":
    main()
