"""Trained models recover the simulator's known truth (small settings, thresholds well below
what the benchmark measures at full size: see benchmarks/results/simulator_recovery.json)."""

import numpy as np
import pytest

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import model_ate, sample_cells
from cradle_pyro.inference.metrics import qc_pass_rate


@pytest.fixture(scope="module")
def screen():
    return simulate_screen(n_cells=2000, n_genes=200, n_singles=6, n_combinations=3, latent_dim=6,
                           n_truth_cells=400, seed=4)


@pytest.fixture(scope="module")
def runs(screen):
    data = PerturbationData.from_anndata(screen, doublets=False, seed=0)
    out = {}
    for kind in ("cradle", "sams"):
        out[kind] = fit(data, TrainConfig(epochs=30, num_particles=3, progress=False, seed=0),
                        ModelConfig(model=kind, latent_dim=6, hidden_dim=64))
    return data, out


def test_trained_models_recover_true_treatment_effects(screen, runs):
    data, fitted = runs
    truth = screen.uns["truth"]
    conds = list(truth["ate_conditions"])
    scores = {}
    for kind, run in fitted.items():
        ate = model_ate(run.model, run.guide, data, conds, num_draws=40, n_cells=100)
        scores[kind] = np.mean([np.corrcoef(ate.loc[c], truth["ate"][i])[0, 1]
                                for i, c in enumerate(conds)])
    print(f"ATE Pearson r vs truth: {scores}")
    # chance is 0; a model ignoring the perturbation would give noise around it
    assert scores["cradle"] > 0.5 and scores["sams"] > 0.5


def test_cradle_generates_cleaner_cells_than_sams(runs):
    data, fitted = runs
    rates = {kind: np.mean([qc_pass_rate(data.qc_thresholds,
                                         sample_cells(run.model, run.guide, data, c, n=200, seed=1))
                            for c in ("control", "P0", "P1+P2" if "P1+P2" in data.condition_names
                                      else data.condition_names[-1])])
             for kind, run in fitted.items()}
    print(f"QC pass rate of generated clean cells: {rates}")
    assert rates["cradle"] > rates["sams"]
    assert rates["cradle"] > 0.9


def test_independence_penalty_keeps_the_effect_out_of_the_basal_state(screen, runs):
    """Training with the default λ = 3 leaves less of each condition in the basal state than the
    plain objective (λ = 0), measured by the per-condition shift of mean q(basal) over the
    offset, and its ATEs are at least as close to the truth."""
    from cradle_pyro.inference.metrics import basal_leakage

    data, fitted = runs
    plain = fit(data, TrainConfig(epochs=30, num_particles=3, progress=False, seed=0,
                                  independence=0.0),
                ModelConfig(model="cradle", latent_dim=6, hidden_dim=64))
    truth = screen.uns["truth"]
    conds = list(truth["ate_conditions"])
    leak, beyond, err = {}, {}, {}
    for name, run in (("penalised", fitted["cradle"]), ("plain", plain)):
        table = basal_leakage(run.model, run.guide, data, split="train")
        assert (table["noise_norm"] > 0).all()
        assert (table["leakage_beyond_noise"] <= table["leakage"] + 1e-9).all()
        leak[name] = table["leakage"].median()
        beyond[name] = table["leakage_beyond_noise"].median()
        ate = model_ate(run.model, run.guide, data, conds, num_draws=40, n_cells=100).to_numpy()
        err[name] = np.sqrt(((ate - np.asarray(truth["ate"])) ** 2).mean())
    print(f"leakage {leak}, beyond noise {beyond}, ATE error {err}")
    assert leak["penalised"] < 0.8 * leak["plain"]
    assert beyond["penalised"] < 0.8 * beyond["plain"]
    assert err["penalised"] < 1.05 * err["plain"]
