"""Ensembles of runs: members differ only by seed; their ATE posterior is the equal mixture."""

from dataclasses import replace

import numpy as np
import pytest

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import posterior_ate
from cradle_pyro.inference.ensembles import ensemble_ate, fit_ensemble

MODEL = ModelConfig(latent_dim=4, hidden_dim=32)


@pytest.fixture(scope="module")
def screen():
    adata = simulate_screen(n_cells=600, n_genes=50, n_singles=4, n_combinations=2, seed=4)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=4)
    runs = fit_ensemble(data, TrainConfig(epochs=3, progress=False, seed=7), MODEL, members=2)
    return data, runs


def test_members_differ_by_seed_and_the_first_is_the_plain_fit(screen):
    data, runs = screen
    assert [r.train_config.seed for r in runs] == [7, 8]
    single = fit(data, TrainConfig(epochs=3, progress=False, seed=7), MODEL)
    np.testing.assert_allclose(single.history["loss"], runs[0].history["loss"])
    assert not np.allclose(runs[0].history["loss"], runs[1].history["loss"])


def test_ensemble_posterior_is_the_mixture_of_the_members(screen):
    data, runs = screen
    perts = ["P0", "P1"]
    post = ensemble_ate(runs, data, perts, num_draws=30, n_cells=20, seed=3)
    assert post.draws.shape == (2, 30, data.n_genes)
    parts = [posterior_ate(r.model, r.guide, data, perts, num_draws=15, n_cells=20, seed=3 + k)
             for k, r in enumerate(runs)]
    # the draws are the members' draws side by side; the mean is the members' average
    np.testing.assert_allclose(post.draws, np.concatenate([p.draws for p in parts], axis=1))
    np.testing.assert_allclose(post.mean.to_numpy(),
                               np.mean([p.mean.to_numpy() for p in parts], axis=0), rtol=1e-5,
                               atol=1e-6)
    # where the members disagree the mixture's interval is at least as wide as either's on average
    width = (post.upper - post.lower).to_numpy().mean()
    assert width >= min((p.upper - p.lower).to_numpy().mean() for p in parts)


def test_ensemble_refuses_too_few_draws_and_empty_ensembles(screen):
    data, runs = screen
    with pytest.raises(ValueError, match="fewer than the 2 members"):
        ensemble_ate(runs, data, ["P0"], num_draws=1)
    with pytest.raises(ValueError, match="at least one run"):
        ensemble_ate([], data, ["P0"])
    with pytest.raises(ValueError, match="members=0"):
        fit_ensemble(data, members=0)


def test_resample_training_draws_each_conditions_training_cells_with_replacement(screen):
    data = screen[0]
    boot = data.resample_training(seed=1)
    train, btrain = data.split == "train", boot.split == "train"
    assert boot.n_cells == data.n_cells and btrain.sum() == train.sum()
    # each condition keeps its number of training cells; the other splits are untouched
    for code in np.unique(data.condition_code[train]):
        assert (btrain & (boot.condition_code == code)).sum() == \
            (train & (data.condition_code == code)).sum()
    np.testing.assert_array_equal(boot.counts[~btrain].toarray(), data.counts[~train].toarray())
    # drawn with replacement: some training cells repeat, some are left out
    rows = {tuple(r) for r in boot.counts[btrain].toarray()}
    assert len(rows) < btrain.sum()
    np.testing.assert_array_equal(data.resample_training(seed=1).counts.toarray(),
                                  boot.counts.toarray())
    assert not np.array_equal(data.resample_training(seed=2).counts.toarray(),
                              boot.counts.toarray())


def test_bootstrap_members_each_train_on_their_own_resample(screen):
    data = screen[0]
    tc = TrainConfig(epochs=2, progress=False, seed=7)
    runs = fit_ensemble(data, tc, MODEL, members=2, bootstrap=True)
    for run, seed in zip(runs, (7, 8)):
        # each member is the plain fit of its own replicate, and answers for the whole screen
        alone = fit(data.resample_training(seed), replace(tc, seed=seed), MODEL)
        np.testing.assert_allclose(run.history["loss"], alone.history["loss"], rtol=1e-6)
        assert run.data is data and run.train_config.bootstrap
    # the first member is not the plain fit: it learnt from a resample too
    single = fit(data, tc, MODEL)
    assert not np.allclose(single.history["loss"], runs[0].history["loss"])


def test_bootstrap_train_config_is_the_ensembles_rule(screen):
    data = screen[0]
    tc = TrainConfig(epochs=2, progress=False, seed=3, bootstrap=True)
    run = fit(data, tc, MODEL)
    member = fit_ensemble(data, replace(tc, bootstrap=False), MODEL, members=1, bootstrap=True)[0]
    np.testing.assert_allclose(run.history["loss"], member.history["loss"], rtol=1e-6)
    # a plain first run is not reused as a bootstrap member
    plain = fit(data, replace(tc, bootstrap=False), MODEL)
    again = fit_ensemble(data, tc, MODEL, members=1, first=plain)[0]
    assert again is not plain and again.train_config.bootstrap
