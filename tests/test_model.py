import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from cradle_pyro import CradleModel, ModelConfig, CradleInputError
from cradle_pyro.distributions import BernoulliStraightThrough
from cradle_pyro.config import MODELS

SITES = {
    "cradle": ["library_effect", "effect", "mask", "gene_effect", "artifact_effect", "dosage",
               "artifact", "basal", "library", "counts"],
    "sams": ["library_effect", "effect", "mask", "gene_effect", "dosage", "artifact", "basal",
             "library", "counts"],
    "cpa": ["library_effect", "effect", "gene_effect", "dosage", "artifact", "basal", "library",
            "counts"],
    "cvae": ["library_effect", "dosage", "artifact", "basal", "library", "counts"],
    "svae+": ["library_effect", "mask_rate", "effect", "mask", "gene_effect", "dosage", "artifact",
              "basal", "library", "counts"],
}


@pytest.mark.parametrize("kind", MODELS)
def test_sites_names_and_shapes(kind):
    P, A, G, d, n = 4, 2, 30, 5, 7
    model = CradleModel(G, P, A, ModelConfig(model=kind, latent_dim=d))
    x = torch.poisson(torch.full((n, G), 2.0))
    tr = poutine.trace(model).get_trace(counts=x, dosage=torch.zeros(n, P),
                                        artifact=torch.zeros(n, A), library=x.sum(1))
    assert list(tr.stochastic_nodes) + [k for k in tr.observation_nodes] == SITES[kind] or \
        [k for k, v in tr.nodes.items() if v["type"] == "sample" and k not in ("cells", "perturbations", "artifact_kinds")] == SITES[kind]
    shapes = {k: tuple(v["value"].shape) for k, v in tr.nodes.items() if v["type"] == "sample"}
    expect = {"effect": (P, d), "mask": (P, d), "artifact_effect": (A, d), "dosage": (n, P),
              "artifact": (n, A), "basal": (n, d), "counts": (n, G), "mask_rate": (d,),
              "gene_effect": (P, G), "library_effect": (P,), "library": (n,)}
    for site in SITES[kind]:
        assert shapes[site] == expect[site], site
    assert tr.nodes["counts"]["is_observed"] and tr.nodes["dosage"]["is_observed"]
    assert tr.nodes["library"]["is_observed"]  # a mediator of the dosage, observed


def test_cell_plate_scales_local_terms_by_n_over_b():
    model = CradleModel(10, 2, 1)
    x = torch.poisson(torch.full((4, 10), 2.0))
    tr = poutine.trace(model).get_trace(counts=x, dosage=torch.zeros(4, 2), artifact=torch.zeros(4, 1),
                                        library=x.sum(1), cell_index=torch.arange(4), num_cells=40)
    assert tr.nodes["basal"]["scale"] == pytest.approx(10.0)
    assert tr.nodes["effect"]["scale"] == 1.0


@pytest.mark.parametrize("prior", ["laplace", "student-t", dist.Laplace(0.0, 0.3),
                                   lambda shape: dist.Normal(torch.zeros(shape), 2.0)])
def test_effect_prior_is_swappable(prior):
    cfg = ModelConfig(priors={"effect": prior})
    model = CradleModel(10, 3, 1, cfg)
    tr = poutine.trace(model).get_trace(n_cells=2)
    fn = tr.nodes["effect"]["fn"].base_dist
    assert type(fn).__name__ in ("Laplace", "StudentT", "Normal")
    if isinstance(prior, str):
        assert type(fn).__name__ == {"laplace": "Laplace", "student-t": "StudentT"}[prior]


def test_bad_config_errors():
    with pytest.raises(CradleInputError, match="choose one of"):
        ModelConfig(model="scvi")
    with pytest.raises(CradleInputError, match="likelihood"):
        ModelConfig(likelihood="gaussian")
    with pytest.raises(CradleInputError, match="effect_prior='cauchyish'; choose one of"):
        ModelConfig(effect_prior="cauchyish")  # refused when configured, not when first sampled


def test_straight_through_mask_scores_bernoulli_pmf_and_passes_gradients():
    logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    q = BernoulliStraightThrough(logits, temperature=0.5)
    pyro.set_rng_seed(0)
    x = q.rsample((2000,))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(x.mean(0), torch.sigmoid(logits).detach(), atol=0.05)
    expected = dist.Bernoulli(logits=logits).log_prob(x.detach())
    assert torch.allclose(q.log_prob(x), expected)
    x.sum().backward()
    assert logits.grad is not None and (logits.grad.abs() > 0).all()


def test_a_hierarchical_prior_with_a_learnt_scale_trains_and_reloads(tmp_path):
    from cradle_pyro import PerturbationData, simulate_screen
    from cradle_pyro.inference import TrainConfig, load_run
    from cradle_pyro.inference.run_io import save_run, train_from_file

    path = tmp_path / "screen.h5ad"
    simulate_screen(n_cells=400, n_genes=40, n_singles=4, n_combinations=2, seed=1).write_h5ad(path)
    run = train_from_file(path, TrainConfig(epochs=3, num_particles=5, progress=False),
                          ModelConfig(effect_prior="laplace-learnt-scale", effect_scale=0.5,
                                      latent_dim=4, hidden_dim=16), doublets=False)
    scale = float(run.model.effect_prior_scale)
    assert scale != 0.5 and np.isfinite(scale)  # the scale was fitted
    save_run(run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert float(loaded.model.effect_prior_scale) == pytest.approx(scale)
    tr = __import__("pyro").poutine.trace(loaded.model).get_trace(n_cells=2)
    assert type(tr.nodes["effect"]["fn"].base_dist).__name__ == "Laplace"
    with pytest.raises(Exception, match="effect_prior='cauchy'"):
        ModelConfig(effect_prior="cauchy")
