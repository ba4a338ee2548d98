"""The Pyro training step against the same computation in plain PyTorch, side by side.

The plain step uses the very same networks and parameters (the model's decoder,
the guide's encoder, effect network and variational parameters) and the same
arithmetic as ``CradleELBO`` on the default ``cradle`` model: vectorised
particles, straight-through mask, reparameterised effects and basal states,
the negative-binomial log-likelihood, the sampled log p − log q of every site
with the minibatch and plate weights, and the alignment KL. It skips Pyro's
sample sites, traces and replay. Steps (forward, backward, AdamW) alternate
between the two in one process; reported are median seconds per step, the
ratio Pyro / plain, and the share of the step spent in matrix multiplies
(``aten::mm``/``addmm``/``bmm``) with the machine's measured matmul rate.

Writes benchmarks/results/step_vs_plain.json.

    python benchmarks/step_vs_plain.py [--genes 2000] [--cells 20000] [--steps 20] [--threads 2]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cradle_pyro import CradleModel, ModelConfig, PerturbationData
from cradle_pyro.distributions import BernoulliStraightThrough
from cradle_pyro.guides import CorrelatedGuide
from cradle_pyro.nets import log_standardise
from cradle_pyro.simulate_large import simulate_large_screen
from cradle_pyro.inference.objective import CradleELBO

ROOT = Path(__file__).resolve().parents[1]


def normal_lp(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * np.log(2 * np.pi)


def bernoulli_lp(x, logits):
    return -F.binary_cross_entropy_with_logits(logits.expand_as(x), x, reduction="none")


class _Trace:
    """Just enough of a trace for CradleELBO.alignment (the globals' values)."""

    def __init__(self, values):
        self.nodes = {k: {"value": v} for k, v in values.items()}


def plain_loss(model, guide, objective, kw):
    """-ELBO + beta * alignment of one minibatch, written out in PyTorch."""
    S = objective.num_particles
    counts, dosage, artifact, library = kw["counts"], kw["dosage"], kw["artifact"], kw["library"]
    B, N = counts.shape[0], kw["num_cells"]
    factor = N / B
    scales = objective.site_scales(dosage, artifact, N)
    # ---- globals: q and p, with the plate weights of the perturbations / artifact kinds
    mask_q = BernoulliStraightThrough(guide.mask_logits.expand(S, *guide.mask_logits.shape),
                                      guide.temperature)
    mask = mask_q.rsample()
    loc, scale = guide.effect_net(mask)
    effect = loc + scale * torch.randn_like(loc)
    prior_logit = torch.logit(torch.tensor(model.config.mask_prob))
    w = scales["effect"]
    lp = ((normal_lp(effect, 0.0, torch.tensor(model.config.effect_scale)).sum(-1)
           + bernoulli_lp(mask, prior_logit).sum(-1)) * w).sum(-1)
    lq = ((normal_lp(effect, loc, scale).sum(-1) + mask_q.log_prob(mask).sum(-1)) * w).sum(-1)
    target = None
    if model.use_target_effects:
        te_loc, te_scale = guide.target_effect_loc, guide.target_effect_scale
        target = te_loc + te_scale * torch.randn(S, *te_loc.shape)
        lp = lp + normal_lp(target, 0.0, torch.tensor(model.config.target_effect_scale)).sum(-1)
        lq = lq + normal_lp(target, te_loc, te_scale).sum(-1)
    a_loc, a_scale = guide.artifact_effect_loc, guide.artifact_effect_scale
    a_effect = a_loc + a_scale * torch.randn(S, *a_loc.shape)
    wa = scales.get("artifact_effect", torch.ones(a_loc.shape[0]))
    lp = lp + (normal_lp(a_effect, 0.0, torch.tensor(1.0)).sum(-1) * wa).sum(-1)
    lq = lq + (normal_lp(a_effect, a_loc, a_scale).sum(-1) * wa).sum(-1)
    # ---- cells: q(basal | x, offsets) and the generative story
    hx = guide.encoder.x_part(log_standardise(counts, library, guide.gene_mean, guide.gene_std))
    p_off = torch.matmul(dosage, effect * mask)                       # (S, B, d)
    a_off = torch.matmul(artifact, a_effect)
    b_loc, b_scale = guide.encoder.head(hx, p_off, a_off)
    b_loc = b_loc - p_off - a_off
    basal = b_loc + b_scale * torch.randn_like(b_loc)
    z = model.combine(basal, p_off, a_off)
    logits = model.decoder(z)
    if target is not None:
        logits = logits + model.target_shift(dosage, target)
    log_mean = library.log().unsqueeze(-1) + torch.log_softmax(logits, -1)
    r = model.dispersion
    t = log_mean - r.log()
    loglik = (torch.lgamma(counts + r) - torch.lgamma(counts + 1) - torch.lgamma(r)).sum(-1) \
        + ((r + counts) * F.logsigmoid(-t) + counts * t).sum(-1)       # (S, B)
    local = (loglik + normal_lp(basal, 0.0, torch.tensor(1.0)).sum(-1)
             - normal_lp(basal, b_loc, b_scale).sum(-1)
             + bernoulli_lp(dosage, torch.logit(model.dosage_freq)).sum(-1)
             + bernoulli_lp(artifact, torch.logit(model.artifact_freq)).sum(-1))
    elbo = (factor * local.sum(-1) + lp - lq).mean()
    trace = _Trace({"effect": effect, "mask": mask, "artifact_effect": a_effect})
    alignment = objective.alignment(model, guide, trace, kw)
    return -elbo + objective.beta * alignment


def matmul_rate(threads, n=1024, repeats=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/cradle_scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_vs_plain.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.cache) / f"step_{args.cells}_{args.genes}.h5ad"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        simulate_large_screen(path, n_cells=args.cells, n_genes=args.genes, n_singles=100,
                              n_combinations=50, seed=0, progress=False)
    import anndata as ad

    data = PerturbationData.from_anndata(ad.read_h5ad(path), doublets=False, seed=0)
    torch.manual_seed(0)
    model = CradleModel.from_data(data, ModelConfig())
    guide = CorrelatedGuide(model, data.gene_mean, data.gene_std)
    objective = CradleELBO(num_particles=5, beta=1.0).for_data(data)
    batches = list(data.batches("train", args.batch_size, seed=0))
    objective(model, guide, **batches[0].model_kwargs())  # create lazily-built parameters
    params = list(model.parameters()) + list(guide.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)

    # same value, up to the Monte Carlo draw: compare at one particle-averaged seed each
    torch.manual_seed(1)
    pyro_value = float(objective(model, guide, **batches[1].model_kwargs()))
    torch.manual_seed(1)
    plain_value = float(plain_loss(model, guide, objective, batches[1].model_kwargs()))

    def step(kind, b):
        kw = b.model_kwargs()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = objective(model, guide, **kw) if kind == "pyro" else plain_loss(model, guide, objective, kw)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times = {"pyro": [], "plain": []}
    for i in range(args.steps + 2):
        b = batches[i % len(batches)]
        for kind in (("pyro", "plain") if i % 2 == 0 else ("plain", "pyro")):
            dt = step(kind, b)
            if i >= 2:
                times[kind].append(dt)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for i in range(3):
            step("pyro", batches[i])
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    mm = [e for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    mm_time = sum(e.self_cpu_time_total for e in mm)
    flops = sum(e.flops for e in mm if e.flops)
    rate = matmul_rate(args.threads)
    out = {
        "genes": args.genes, "batch_size": args.batch_size, "particles": 5, "threads": args.threads,
        "targets": data.n_perturbations, "steps": args.steps,
        "pyro_seconds_per_step": float(np.median(times["pyro"])),
        "plain_seconds_per_step": float(np.median(times["plain"])),
        "ratio_pyro_over_plain": float(np.median(times["pyro"]) / np.median(times["plain"])),
        "loss_pyro_vs_plain_same_draws": [pyro_value, plain_value],
        "matmul_share_of_step": round(mm_time / total, 3),
        "matmul_rate_gflops_in_step": round(flops / max(mm_time, 1) / 1e3, 2),
        "machine_matmul_gflops": round(rate / 1e9, 2),
    }
    out["matmul_rate_fraction"] = round(out["matmul_rate_gflops_in_step"] / out["machine_matmul_gflops"], 3)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
