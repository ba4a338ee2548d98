"""The library as a mediator of the dosage (``library_effects``): its site, counterfactual
libraries (abduction of each cell's own noise), and recovery on a simulated screen whose
perturbations change how much RNA a cell holds (``simulate_screen(library_effect_scale=...)``)."""

import numpy as np
import pytest
import torch
from pyro import poutine

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.guides import make_guide
from cradle_pyro.model import CradleModel
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import data_ate, model_ate
from cradle_pyro.inference.interventions import counterfactual_library, intervene


def test_library_is_an_observed_mediator_only_when_switched_on():
    on = CradleModel(n_genes=20, n_perturbations=3, n_artifacts=1,
                     config=ModelConfig(library_effects=True, library_effect_scale=0.4))
    dosage = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    tr = poutine.trace(on).get_trace(dosage=dosage, artifact=torch.zeros(2, 1),
                                     library=torch.tensor([50.0, 80.0]))
    assert tr.nodes["library_effect"]["fn"].scale.eq(0.4).all()
    site = tr.nodes["library"]
    assert site["is_observed"] and site["value"].tolist() == [50.0, 80.0]
    # the treated cell's LogNormal is shifted by its perturbation's library effect
    shift = tr.nodes["library_effect"]["value"][0]
    loc = site["fn"].base_dist.loc if hasattr(site["fn"], "base_dist") else site["fn"].loc
    assert torch.allclose(loc[0] - loc[1], shift)
    off = CradleModel(n_genes=20, n_perturbations=3, n_artifacts=1,
                      config=ModelConfig(library_effects=False))
    tr = poutine.trace(off).get_trace(dosage=dosage, artifact=torch.zeros(2, 1),
                                      library=torch.tensor([50.0, 80.0]))
    assert "library_effect" not in tr.nodes and "library" not in tr.nodes  # exogenous, given


def test_counterfactual_library_keeps_the_cells_noise_and_takes_the_shift():
    model = CradleModel(n_genes=20, n_perturbations=2, n_artifacts=1,
                        config=ModelConfig(library_effects=True))
    names = dict(perturbation_names=["A", "B"], control_label="control", separator="+")
    tr = poutine.trace(intervene(model, library_effect=torch.tensor([0.5, -0.2]))).get_trace(
        n_cells=1)
    library = torch.tensor([100.0, 200.0, 300.0])
    factual = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    moved = counterfactual_library(model, tr, library, factual, "A+B", names)
    expected = library * torch.exp(torch.tensor([0.3, -0.2, 0.0]))
    assert torch.allclose(moved, expected)
    # no dosage intervention, or no library effect: the observed library stays
    assert counterfactual_library(model, tr, library, factual, None, names) is library
    plain = CradleModel(n_genes=20, n_perturbations=2, n_artifacts=1,
                        config=ModelConfig(library_effects=False))
    gtr = poutine.trace(make_guide("correlated", plain)).get_trace(n_cells=1)
    assert counterfactual_library(plain, gtr, library, factual, "A", names) is library


@pytest.fixture(scope="module")
def library_screen():
    adata = simulate_screen(n_cells=1500, n_genes=80, n_singles=6, n_combinations=2,
                            n_interacting=0, artifact_fraction=0.0, library_median=300.0,
                            library_effect_scale=0.6, seed=4)
    return adata, PerturbationData.from_anndata(adata, doublets=False, seed=4)


def test_library_effects_are_recovered_and_move_the_ates_toward_the_truth(library_screen):
    adata, data = library_screen
    truth = adata.uns["truth"]
    singles = [f"P{i}" for i in range(6)]
    tc = TrainConfig(epochs=25, seed=0, progress=False)
    with_lib = fit(data, tc, ModelConfig(library_effects=True))
    learnt = with_lib.guide.library_effect_loc.detach().numpy()
    order = [data.perturbation_names.index(p) for p in singles]
    true_shift = np.asarray(truth["library_effect"])
    assert np.corrcoef(learnt[order], true_shift)[0, 1] > 0.95
    assert np.abs(learnt[order] - true_shift).max() < 0.2  # 0.11 measured after 25 epochs
    # ATEs at each condition's own libraries: closer to the truth with the mediator
    true_ate = dict(zip(truth["ate_conditions"], truth["ate"]))
    errors = {}
    without = fit(data, tc, ModelConfig(library_effects=False))
    for name, run in (("on", with_lib), ("off", without)):
        ate = model_ate(run.model, run.guide, data, singles, num_draws=20, n_cells=200, seed=0)
        errors[name] = float(np.mean([(ate.loc[p].to_numpy() - true_ate[p]) ** 2 for p in singles]))
    assert errors["on"] < 0.8 * errors["off"], errors
