"""The direct per-gene effect path (``gene_effects``): its site, its meaning, and recovery of
effects that the latent cannot express (simulator with ``direct_genes``)."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.guides import CorrelatedGuide
from cradle_pyro.model import CradleModel
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import model_ate
from cradle_pyro.inference.interventions import intervene


def test_gene_effect_site_shapes_and_guide_agreement():
    model = CradleModel(n_genes=30, n_perturbations=4, n_artifacts=1,
                        config=ModelConfig(gene_effects=True, gene_effect_prior="laplace",
                                           gene_effect_scale=0.2))
    tr = poutine.trace(model).get_trace(n_cells=5)
    assert tuple(tr.nodes["gene_effect"]["value"].shape) == (4, 30)
    # Laplace prior of the configured scale
    fn = tr.nodes["gene_effect"]["fn"].base_dist
    assert isinstance(fn, pyro.distributions.Laplace) and torch.allclose(fn.scale, torch.tensor(0.2))
    x = torch.poisson(torch.full((5, 30), 3.0))
    gtr = poutine.trace(CorrelatedGuide(model)).get_trace(
        counts=x, dosage=torch.zeros(5, 4), artifact=torch.zeros(5, 1), library=x.sum(1))
    assert tuple(gtr.nodes["gene_effect"]["value"].shape) == (4, 30)
    off = CradleModel(n_genes=30, n_perturbations=4, n_artifacts=1,
                      config=ModelConfig(gene_effects=False))
    assert "gene_effect" not in poutine.trace(off).get_trace(n_cells=5).nodes
    # a learnt prior: Laplace with one scale per perturbation, starting at gene_effect_scale
    learnt = CradleModel(n_genes=30, n_perturbations=4, n_artifacts=1,
                         config=ModelConfig(gene_effects=True, gene_effect_prior="laplace-learnt-scale",
                                            gene_effect_scale=0.3))
    scale = poutine.trace(learnt).get_trace(n_cells=5).nodes["gene_effect"]["fn"].base_dist.scale
    assert tuple(learnt.gene_effect_log_scale.shape) == (4, 1)
    assert torch.allclose(scale, torch.tensor(0.3)) and scale.requires_grad


def test_gene_effect_is_a_log_fold_change_of_one_gene():
    """do(gene_effect) with +1 on gene 3 of perturbation 0 multiplies gene 3's expected counts,
    relative to any other gene, by e in treated cells and leaves control cells alone."""
    pyro.set_rng_seed(0)
    model = CradleModel(n_genes=12, n_perturbations=2, n_artifacts=1,
                        config=ModelConfig(gene_effects=True))
    basal = torch.randn(4, model.latent_dim)
    dosage = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])

    def expected(gene_effect):
        fixed = dict(basal=basal, effect=torch.zeros(2, model.latent_dim),
                     mask=torch.zeros(2, model.latent_dim), gene_effect=gene_effect,
                     artifact_effect=torch.zeros(1, model.latent_dim))
        tr = poutine.trace(intervene(model, dosage=dosage, **fixed)).get_trace(
            artifact=torch.zeros(4, 1), library=torch.full((4,), 1000.0))
        return tr.nodes["counts"]["fn"].mean

    shift = torch.zeros(2, 12)
    shift[0, 3] = 1.0
    before, after = expected(torch.zeros(2, 12)), expected(shift)
    ratio = (after[:, 3] / after[:, 5]) / (before[:, 3] / before[:, 5])
    assert torch.allclose(ratio[:2], torch.tensor(np.e), rtol=1e-4)
    assert torch.allclose(after[2:], before[2:])


@pytest.fixture(scope="module")
def direct_screen():
    return simulate_screen(n_cells=1500, n_genes=120, n_singles=4, n_combinations=2,
                           latent_dim=4, direct_genes=6, direct_scale=1.0, n_truth_cells=300,
                           seed=5)


def test_direct_effects_are_recovered_where_the_latent_alone_shrinks_them(direct_screen):
    truth = direct_screen.uns["truth"]
    data = PerturbationData.from_anndata(direct_screen, doublets=False, seed=0)
    singles = [c for c in truth["ate_conditions"] if "+" not in c]
    ate_true = {c: truth["ate"][i] for i, c in enumerate(truth["ate_conditions"])}
    slopes = {}
    for on in (False, True):
        run = fit(data, TrainConfig(epochs=40, num_particles=2, progress=False, seed=0),
                  ModelConfig(latent_dim=4, hidden_dim=64, gene_effects=on))
        ate = model_ate(run.model, run.guide, data, singles, num_draws=20, n_cells=200)
        s = []
        for i, c in enumerate(singles):
            genes = np.flatnonzero(truth["direct_effect"][i])  # the directly hit genes
            t, p = ate_true[c][genes], ate.loc[c].to_numpy()[genes]
            s.append((p * t).sum() / (t * t).sum())  # slope through the origin
        slopes[on] = float(np.mean(s))
        if on:
            loc = run.guide.gene_effect_loc.detach().numpy()
            rows = [list(data.perturbation_names).index(c) for c in singles]
            hit = truth["direct_effect"] != 0
            # the guide finds the hit genes: its effects there follow the truth and dwarf the rest
            assert np.corrcoef(loc[rows][hit], truth["direct_effect"][hit])[0, 1] > 0.8
            assert np.abs(loc[rows][hit]).mean() > 3 * np.abs(loc[rows][~hit]).mean()
    print(f"slope on directly hit genes: latent only {slopes[False]:.2f}, with gene effects "
          f"{slopes[True]:.2f}")
    assert slopes[True] > 0.5 and slopes[True] > slopes[False] + 0.1
