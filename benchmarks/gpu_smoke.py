"""The CUDA paths end to end, when a GPU is there: train, checkpoint, resume, effects, counterfactuals.

Trains ``cradle`` on a simulated screen on the GPU for 3 epochs with checkpoints,
resumes to 6 epochs (the saved RNG states travel between devices), draws
posterior ATEs and counterfactuals on the GPU, and times an epoch on the GPU
and on the CPU. Writes benchmarks/results/gpu_smoke.json (or ``--out``).

    python benchmarks/gpu_smoke.py [--out FILE]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cradle_pyro import PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.counterfactuals import counterfactual
from cradle_pyro.inference.effects import posterior_ate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu_smoke.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: this check needs one")
    adata = simulate_screen(n_cells=5000, n_genes=1000, seed=0)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=0)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    ckpt = Path(tempfile.mkdtemp())
    t0 = time.time()
    fit(data, TrainConfig(epochs=3, device="cuda", progress=False), checkpoint_dir=ckpt)
    result["gpu_seconds_per_epoch"] = (time.time() - t0) / 3
    resumed = fit(data, TrainConfig(epochs=6, device="cuda", progress=False), checkpoint_dir=ckpt,
                  resume=True)
    straight = fit(data, TrainConfig(epochs=6, device="cuda", progress=False))
    result["resumed_epochs"] = len(resumed.history)
    result["resumed_final_loss"] = float(resumed.history["loss"].iloc[-1])
    result["straight_final_loss"] = float(straight.history["loss"].iloc[-1])
    post = posterior_ate(resumed.model, resumed.guide, data, ["P0", "P1+P2"] if "P1+P2" in
                         data.condition_names else ["P0", "P1"], num_draws=100, n_cells=200)
    result["ate_finite"] = bool(np.isfinite(post.draws).all())
    cf = counterfactual(resumed.model, resumed.guide, data, artifact="clean", num_samples=4)
    result["counterfactual_shape"] = list(cf.shape)
    result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    t0 = time.time()
    fit(data, TrainConfig(epochs=1, device="cpu", progress=False))
    result["cpu_seconds_per_epoch"] = time.time() - t0
    result["cpu_threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
