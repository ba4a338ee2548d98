"""Data-parallel training: 2 CPU processes vs 1 on the same data (torchrun, Gloo).

Simulates a 40,000 × 1,000 screen (``simulate_large_screen``), then trains
``cradle`` for ``--epochs`` epochs with ``torchrun --nproc_per_node=P`` for P = 1
and 2, one torch thread per process, and reads the seconds spent in training
passes from rank 0 (``history.train_seconds``; data loading excluded). With
P processes each epoch takes 1/P of the steps on each rank, so the ideal time
is T1 / P; scaling efficiency = T1 / (P · T_P). Every run also checks that the
global parameters are identical on all ranks (SHA-256 digest). Writes
benchmarks/results/ddp_scaling.json.

    python benchmarks/ddp_scaling.py [--epochs 2] [--cache /tmp/cradle_scale]
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cells", type=int, default=40_000)
    ap.add_argument("--cache", default="/tmp/cradle_scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_scaling.json"))
    args = ap.parse_args()
    from cradle_pyro.simulate_large import simulate_large_screen

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"ddp_{args.cells}.h5ad"
    if not path.exists():
        simulate_large_screen(path, n_cells=args.cells, n_genes=1000, n_singles=50,
                              n_combinations=25, seed=0, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {"cells": args.cells, "genes": 1000, "epochs": args.epochs, "cpus": os.cpu_count(),
               "threads_per_process": 1, "runs": {}}
    for procs in (1, 2):
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
             "-m", "cradle_pyro.inference.distributed", str(path), "--out", str(cache / f"ddp_run_{procs}"),
             "--epochs", str(args.epochs), "--no-doublets", "--threads", "1", "--batch-size", "256",
             "--overwrite"], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("rank 0")][-1]
        seconds = float(re.search(r"\(([\d.]+) s in training passes\)", line).group(1))
        results["runs"][procs] = {"train_seconds": seconds, "identical_parameters":
                                  "parameters identical on all ranks" in line}
        print(procs, results["runs"][procs], flush=True)
    t1, t2 = results["runs"][1]["train_seconds"], results["runs"][2]["train_seconds"]
    results["speedup"] = round(t1 / t2, 3)
    results["scaling_efficiency"] = round(t1 / (2 * t2), 3)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
