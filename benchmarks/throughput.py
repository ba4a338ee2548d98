"""Training-step throughput and memory of each model switch.

Times optimisation steps (forward, backward, AdamW) on a simulated screen and
records cells per second and peak resident memory; writes
benchmarks/results/throughput.json. Also counts the matrix work of one cradle
step against the published code's recipe (every cell decoded twice, four basal
encodings per cell) in multiply-adds of the gene-sized layers, which dominate.

    python benchmarks/throughput.py [--cells 5000] [--genes 1000] [--steps 30] [--device cpu]
"""

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from cradle_pyro import CradleModel, ModelConfig, PerturbationData, make_guide, simulate_screen
from cradle_pyro.inference import CradleELBO


def gene_layer_macs(batch, genes, hidden, n_groups, encodings_per_cell, decodes_per_cell, particles):
    """Multiply-adds of the genes->hidden encoder layer and hidden->genes decoder layer."""
    enc = (encodings_per_cell * batch + n_groups) * genes * hidden
    dec = decodes_per_cell * batch * particles * genes * hidden
    return enc + dec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=5000)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    data = PerturbationData.from_anndata(simulate_screen(args.cells, args.genes, seed=0), doublets=False)
    results = {"cells": args.cells, "genes": args.genes, "batch_size": args.batch_size,
               "device": args.device, "torch_threads": torch.get_num_threads(), "models": {}}
    for kind in ("cradle", "sams", "cpa", "cvae", "svae+"):
        model = CradleModel.from_data(data, ModelConfig(model=kind)).to(args.device)
        guide = make_guide("correlated", model, data.gene_mean, data.gene_std).to(args.device)
        objective = CradleELBO(num_particles=5).for_data(data)
        batches = list(data.batches("train", args.batch_size, seed=0, device=args.device))
        objective(model, guide, **batches[0].model_kwargs())
        opt = torch.optim.AdamW(list(model.parameters()) + list(guide.parameters()), lr=1e-3)
        times = []
        for step in range(args.steps):
            b = batches[step % len(batches)]
            t0 = time.perf_counter()
            opt.zero_grad()
            objective(model, guide, **b.model_kwargs()).backward()
            opt.step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times[3:]))
        results["models"][kind] = {"median_step_seconds": med,
                                   "cells_per_second": args.batch_size / med}
        print(kind, results["models"][kind], flush=True)
    n_groups = int(np.median([len(b.reference.profiles) for b in batches]))
    h = ModelConfig().hidden_dim
    ours = gene_layer_macs(args.batch_size, args.genes, h, n_groups, 1, 1, 5)
    published = gene_layer_macs(args.batch_size, args.genes, h, 0, 4, 2, 5)
    results["cradle_gene_layer_macs_per_step"] = {
        "this_project": ours, "published_recipe": published, "ratio": ours / published,
        "reference_groups_per_batch": n_groups}
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
