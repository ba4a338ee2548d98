"""Scale: time and peak memory of each stage at 10k, 100k and 1M cells × 2,000 genes (sparse).

Per size, in a fresh process (so peak memory is that size's alone):

1. ``simulate``: :func:`cradle_pyro.simulate_large.simulate_large_screen` writes the
   screen to an ``.h5ad`` chunk by chunk (skipped when the file exists);
2. ``read``: ``anndata.read_h5ad`` (CSR in memory);
3. ``data``: ``PerturbationData.from_anndata`` (QC by k·MAD without scrublet,
   references, standardisation, QC covariates; its stage times from
   ``data.build_seconds``); its peak memory above the loaded matrix, as a
   multiple of the CSR matrix's bytes;
4. ``epoch``: one training epoch of ``cradle`` (``fit(epochs=1)``, batch 512,
   defaults otherwise: 5 particles, alignment on), and the cells per second
   of the training cells.

Peak memory is the process's resident set size, sampled every 20 ms. Writes
benchmarks/results/scale.json with the machine it ran on.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--threads 2] [--cache /tmp/cradle_scale]
    python benchmarks/scale.py --on-disk --out benchmarks/results/scale_on_disk.json   # counts stay in the file
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    """The process's peak resident set size while the block runs (bytes)."""

    def __init__(self, interval=0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.current()
        self.peak = self.start
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def one_size(n_cells, cache, threads, epoch_batch, on_disk=False) -> dict:
    import anndata as ad
    import torch

    from cradle_pyro import PerturbationData
    from cradle_pyro.simulate_large import simulate_large_screen
    from cradle_pyro.inference import TrainConfig, fit

    torch.set_num_threads(threads)
    gib = 1024 ** 3
    path = Path(cache) / f"screen_{n_cells}.h5ad"
    out = {"n_cells": n_cells, "n_genes": 2000, "counts_on_disk": on_disk}
    if not path.exists():
        t0 = time.time()
        with PeakRSS() as m:
            simulate_large_screen(path, n_cells=n_cells, n_genes=2000, seed=0, progress=False)
        out["simulate"] = {"seconds": round(time.time() - t0, 1), "peak_rss_gib": round(m.peak / gib, 2),
                           "file_gib": round(path.stat().st_size / gib, 2)}
    t0 = time.time()
    with PeakRSS() as m:
        adata = ad.read_h5ad(path, backed="r" if on_disk else None)
    X = adata.X
    if on_disk:  # what the matrix would take in memory
        csr = X.group["data"].size * 4 + X.group["indices"].size * 4 + X.group["indptr"].size * 8
    else:
        csr = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    nnz = int(X.group["data"].size) if on_disk else int(X.nnz)
    out["matrix"] = {"nnz": nnz, "nnz_per_cell": round(nnz / n_cells, 1),
                     "csr_gib": round(csr / gib, 3)}
    out["read"] = {"seconds": round(time.time() - t0, 1), "peak_rss_gib": round(m.peak / gib, 2)}
    t0 = time.time()
    with PeakRSS() as m:
        data = PerturbationData.from_anndata(adata, doublets=False, seed=0, counts_on_disk=on_disk)
    out["data"] = {"seconds": round(time.time() - t0, 1), "stages": data.build_seconds,
                   "peak_rss_gib": round(m.peak / gib, 2),
                   "peak_above_loaded_matrix_gib": round((m.peak - m.start) / gib, 3),
                   "peak_above_loaded_matrix_x_csr": round((m.peak - m.start) / csr, 3),
                   "targets": data.n_perturbations, "conditions": len(data.condition_names)}
    n_train = len(data.indices("train"))
    t0 = time.time()
    with PeakRSS() as m:
        run = fit(data, TrainConfig(epochs=1, batch_size=epoch_batch, progress=False, seed=0))
    seconds = time.time() - t0
    out["epoch"] = {"seconds": round(seconds, 1), "train_cells": n_train, "batch_size": epoch_batch,
                    "cells_per_second": round(n_train / seconds, 1),
                    "peak_rss_gib": round(m.peak / gib, 2),
                    "elbo": float(run.history["elbo"].iloc[-1])}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--cache", default="/tmp/cradle_scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--on-disk", action="store_true",
                    help="read the file backed and keep the counts on disk (counts_on_disk=True)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    if args.one is not None:  # child process: one size, JSON on stdout
        print(json.dumps(one_size(args.one, args.cache, args.threads, args.batch_size, args.on_disk)))
        return
    import torch

    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "threads": args.threads, "torch": torch.__version__,
                           "ram_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                            / 1024 ** 3, 1)},
               "sizes": []}
    for n in [int(s) for s in args.sizes.split(",")]:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--threads", str(args.threads),
                               "--batch-size", str(args.batch_size), "--cache", args.cache]
                              + (["--on-disk"] if args.on_disk else []),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results["sizes"].append({"n_cells": n, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            results["sizes"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results["sizes"][-1]), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
