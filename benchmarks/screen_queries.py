"""Every pair of 100 singles at 2,000 genes: the query engine's time and memory, on 2 CPU cores.

A simulated screen of 100 singles (``simulate_screen``: 2,000 genes, 12,000 cells, 50 measured
pairs) is trained briefly with the CLI (3 epochs: the query's cost does not depend on how well
the run fits). Then, as a user would:

    cradle-pyro interactions RUN --pairs all --out pairs.csv --threads 2 --quiet

asks for the posterior interaction of all 4,950 pairs (5,051 conditions with the singles and
control), timed end to end (loading the run included) with ``/usr/bin/time -v`` for the peak
resident memory. On the same run, the per-condition sampled estimator
(``posterior_ate``, 200 draws × 500 cells) is timed on a few conditions and extrapolated to
5,051, for the speed-up. The engine's posterior mean ATEs are checked against that estimator's
on those conditions (r per condition).

Cores and threads are stated in the result file. No GPU was lent to this task, so none was used.

Run: python benchmarks/screen_queries.py  →  benchmarks/results/screen_queries.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "screen_queries.json"


def _cli(*args):
    return [sys.executable, "-m", "cradle_pyro.inference.cli", *args]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampled-conditions", type=int, default=3)
    args = ap.parse_args()
    import torch

    from cradle_pyro import simulate_screen
    from cradle_pyro.inference.effects import posterior_ate
    from cradle_pyro.inference.run_io import load_run
    from cradle_pyro.inference.screen_queries import ENGINE_CELLS, ENGINE_DRAWS, batched_ate

    torch.set_num_threads(args.threads)
    report = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "machine": {"cpu_cores": os.cpu_count(), "threads": args.threads, "gpu": "none lent"},
              "settings": {"singles": args.singles, "genes": args.genes, "cells": 12000,
                           "train_epochs": 3, "engine_draws": ENGINE_DRAWS,
                           "engine_cells": ENGINE_CELLS, "sampled_draws": 200,
                           "sampled_cells": 500, "seed": args.seed}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adata = simulate_screen(12000, args.genes, n_singles=args.singles, n_combinations=50,
                                n_truth_cells=100, seed=args.seed)
        adata.write_h5ad(tmp / "screen.h5ad")
        subprocess.run(_cli("train", str(tmp / "screen.h5ad"), "--out", str(tmp / "run"),
                            "--epochs", "3", "--no-doublets", "--quiet", "--threads",
                            str(args.threads), "--seed", str(args.seed)), check=True)
        t0 = time.time()
        proc = subprocess.run(["/usr/bin/time", "-v", *_cli(
            "interactions", str(tmp / "run"), "--pairs", "all", "--out", str(tmp / "pairs.csv"),
            "--threads", str(args.threads), "--quiet")], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
        n_pairs = sum(1 for _ in open(tmp / "pairs.csv")) - 1
        report["all_pairs_cli"] = {"pairs": n_pairs, "conditions": n_pairs + args.singles + 1,
                                   "seconds": round(wall, 1), "peak_memory_gib":
                                   round(peak_kb / 2**20, 2)}
        print(report["all_pairs_cli"], flush=True)

        run = load_run(tmp / "run")
        data = run.data
        pairs = [f"{a}+{b}" for a, b in zip(data.perturbation_names[:args.sampled_conditions],
                                            data.perturbation_names[args.sampled_conditions:
                                                                    2 * args.sampled_conditions])]
        t0 = time.time()
        sampled = posterior_ate(run.model, run.guide, data, pairs, seed=1)
        per_condition = (time.time() - t0) / (len(pairs) + 1)  # control is computed once more
        t0 = time.time()
        engine = batched_ate(run.model, run.guide, data, pairs, seed=2)
        engine_s = time.time() - t0
        r = [float(np.corrcoef(a, b)[0, 1]) for a, b in
             zip(engine.mean.to_numpy(), sampled.mean.to_numpy())]
        conditions = report["all_pairs_cli"]["conditions"]
        report["sampled_estimator"] = {
            "seconds_per_condition": round(per_condition, 2),
            "extrapolated_seconds_all_pairs": round(per_condition * conditions, 0),
            "speed_up": round(per_condition * conditions / wall, 1)}
        report["engine_vs_sampled_same_run"] = {"conditions": pairs, "r_posterior_mean_ate": r,
                                                "engine_seconds": round(engine_s, 2)}
    OUT.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
