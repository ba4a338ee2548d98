"""Posterior intervals on ATEs, how sample_cells draws globals, model selection for effects."""

import numpy as np
import pytest

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import abduction_cells, generate, posterior_ate, sample_cells


@pytest.fixture(scope="module")
def run():
    adata = simulate_screen(n_cells=800, n_genes=60, n_singles=4, n_combinations=2, seed=2)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=2)
    return fit(data, TrainConfig(epochs=4, progress=False, seed=2),
               ModelConfig(latent_dim=4, hidden_dim=32))


def test_posterior_ate_has_ordered_intervals_and_sign_probabilities(run):
    post = posterior_ate(run.model, run.guide, run.data, ["P0", "P1+P2"] if "P1+P2" in
                         run.data.condition_names else ["P0", "P1"], num_draws=30, n_cells=40)
    assert post.draws.shape == (2, 30, run.data.n_genes)
    lo, m, up = post.lower.to_numpy(), post.mean.to_numpy(), post.upper.to_numpy()
    assert (lo <= m + 1e-9).all() and (m <= up + 1e-9).all() and (up > lo).any()
    total = post.prob_increase.to_numpy() + post.prob_decrease.to_numpy()
    assert ((total > 0.7) & (total <= 1.0)).all()
    long = post.to_long()
    assert len(long) == 2 * run.data.n_genes and long["interval"].eq(0.9).all()
    # same seed, same numbers; another seed moves the mean only a little
    again = posterior_ate(run.model, run.guide, run.data, list(post.perturbations), num_draws=30,
                          n_cells=40)
    np.testing.assert_allclose(again.draws, post.draws)
    other = posterior_ate(run.model, run.guide, run.data, list(post.perturbations), num_draws=30,
                          n_cells=40, seed=1)
    assert np.corrcoef(other.mean.to_numpy().ravel(), m.ravel())[0, 1] > 0.6


@pytest.mark.parametrize("basal", ["abducted", "prior"])
def test_control_against_itself_is_exactly_zero(run, basal):
    post = posterior_ate(run.model, run.guide, run.data, [run.data.control_label], num_draws=5,
                         n_cells=10, basal=basal)
    assert np.abs(post.draws).max() == 0


def test_abduction_generates_the_screens_own_cells_under_the_intervention(run):
    data = run.data
    pool = abduction_cells(data)
    assert set(data.split[pool]) == {"train"} and (data.artifact[pool].sum(1) == 0).all()
    cells = data.batch(pool[:50])
    own = np.asarray(data.conditions)[pool[:50]]
    # each cell regenerated under what it received (expected counts): close to the cell itself,
    # far closer than new cells from the prior are to it
    x = cells.counts.numpy()
    obs = np.log1p(1e4 * x / x.sum(1, keepdims=True))

    def fit_to_cells(expected):
        e = np.log1p(1e4 * expected / expected.sum(1, keepdims=True))
        return np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(e, obs)])

    same = []
    for c in sorted(set(own)):
        rows = np.flatnonzero(own == c)
        sub = data.batch(pool[:50][rows])
        same.append(generate(run.model, run.guide, len(rows), dosage=c, cells=sub, expected=True,
                             names={"perturbation_names": data.perturbation_names,
                                    "control_label": data.control_label})[0].numpy())
    abducted = np.concatenate(same)
    order = np.concatenate([np.flatnonzero(own == c) for c in sorted(set(own))])
    obs = obs[order]
    prior = generate(run.model, run.guide, 50, dosage=data.control_label, expected=True,
                     library=cells.library[order],
                     names={"perturbation_names": data.perturbation_names,
                            "control_label": data.control_label})[0].numpy()
    assert fit_to_cells(abducted) > fit_to_cells(prior) + 0.03  # measured 0.73 vs 0.65
    with pytest.raises(ValueError, match="n_cells"):
        generate(run.model, run.guide, 7, cells=cells)
    with pytest.raises(ValueError, match="basal"):
        posterior_ate(run.model, run.guide, data, ["P0"], num_draws=2, n_cells=5, basal="cells")


def test_sample_cells_draws_globals_per_cell_or_once(run):
    per_cell = sample_cells(run.model, run.guide, run.data, "P0", n=40, seed=3)
    one = sample_cells(run.model, run.guide, run.data, "P0", n=40, seed=3, globals="one-draw")
    assert per_cell.shape == one.shape == (40, run.data.n_genes)
    assert not np.array_equal(per_cell.X.toarray(), one.X.toarray())
    with pytest.raises(ValueError, match="globals"):
        sample_cells(run.model, run.guide, run.data, "P0", n=4, globals="some")


def test_selection_criteria_keep_the_state_they_promise(run):
    data = run.data
    last = fit(data, TrainConfig(epochs=3, select="last", progress=False))
    assert last.best_epoch == 2
    ate = fit(data, TrainConfig(epochs=3, select="ate", warmup=1, progress=False))
    assert "val_ate_error" in ate.history and np.isfinite(ate.history["val_ate_error"]).all()
    assert ate.best_epoch >= 1  # nothing kept during warm-up
    assert ate.best_epoch == 1 + int(np.argmin(ate.history["val_ate_error"].to_numpy()[1:]))
    from cradle_pyro.errors import CradleInputError
    with pytest.raises(CradleInputError, match="select"):
        fit(data, TrainConfig(epochs=1, select="best", progress=False))


def test_selection_without_validation_cells_says_what_to_change(run):
    from cradle_pyro.errors import CradleInputError
    from cradle_pyro.inference.selection import ValidationEffects
    adata = simulate_screen(n_cells=300, n_genes=30, n_singles=3, n_combinations=1, seed=3)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=3,
                                         split_fractions=(1.0, 0.0, 0.0))
    assert not ValidationEffects(data)
    with pytest.raises(ValueError, match="split_fractions"):
        ValidationEffects(data).predictions(run.model, run.guide)
    with pytest.raises(CradleInputError, match="needs validation cells"):
        fit(data, TrainConfig(epochs=1, select="ate", progress=False))


def test_counterfactuals_and_individual_effects_carry_intervals(run):
    from cradle_pyro.inference.counterfactuals import counterfactual

    cf = counterfactual(run.model, run.guide, run.data, artifact="clean", num_samples=8, split="val")
    lo, m, up = cf.layers["expected_lower"], cf.layers["expected"], cf.layers["expected_upper"]
    assert (lo <= m + 1e-4).all() and (m <= up + 1e-4).all()
    effect = cf.layers["expected"] - cf.layers["factual_expected"]
    assert (cf.layers["effect_lower"] <= effect + 1e-3).all()
    assert (effect <= cf.layers["effect_upper"] + 1e-3).all()
    clean = cf.obs["observed_artifact"].to_numpy() == 0
    # removing an artifact a clean cell does not have changes nothing
    np.testing.assert_allclose(cf.layers["effect_lower"][clean], 0, atol=1e-4)
    assert cf.uns["interval"] == 0.9


def test_latent_representations_separate_conditions_only_in_the_full_latent(run):
    import anndata as ad

    from cradle_pyro.inference.embeddings import add_latents

    data = run.data
    cells = ad.AnnData(X=data.counts, obs={"c": list(data.conditions)})
    cells.obs_names = data.obs_names
    add_latents(cells, run.model, run.guide, data)

    def share_between(x):  # η²: share of variance explained by the condition
        groups = cells.obs["c"].to_numpy()
        means = {g: x[groups == g].mean(0) for g in set(groups)}
        between = sum((groups == g).sum() * ((m - x.mean(0)) ** 2).sum() for g, m in means.items())
        return between / ((x - x.mean(0)) ** 2).sum()

    basal, latent = cells.obsm["X_cradle_basal"], cells.obsm["X_cradle_latent"]
    assert basal.shape == (data.n_cells, run.model.latent_dim) and np.isfinite(latent).all()
    assert share_between(basal) < share_between(latent)


def test_twin_worlds_share_count_noise(run):
    from cradle_pyro.inference.counterfactuals import counterfactual

    cf = counterfactual(run.model, run.guide, run.data, artifact="clean", split="val")
    clean = cf.obs["observed_artifact"].to_numpy() == 0
    X, F = cf.X.toarray(), cf.layers["factual"].toarray()
    # where the intervention changes nothing downstream the twins' counts are identical
    np.testing.assert_array_equal(X[clean], F[clean])
    art = ~clean
    if art.any():  # and where it does, they differ
        assert not np.array_equal(X[art], F[art])
    independent = counterfactual(run.model, run.guide, run.data, artifact="clean", split="val",
                                 noise="independent")
    assert not np.array_equal(independent.X.toarray()[clean],
                              independent.layers["factual"].toarray()[clean])


def test_quantile_coupled_counts_follow_their_distributions():
    import pyro.distributions as dist
    import torch

    from cradle_pyro.inference.counterfactuals import quantile_counts

    torch.manual_seed(0)
    u = torch.rand(20000, 3)
    mean = torch.tensor([0.5, 4.0, 30.0]).expand(20000, 3)
    theta = torch.tensor(2.0)
    nb = dist.NegativeBinomial(total_count=theta.expand_as(mean), logits=mean.log() - theta.log())
    for fn in (nb, dist.Poisson(mean),
               dist.ZeroInflatedNegativeBinomial(total_count=theta.expand_as(mean),
                                                 logits=mean.log() - theta.log(),
                                                 gate_logits=torch.full_like(mean, -1.0))):
        x = quantile_counts(fn.to_event(1), u)
        np.testing.assert_allclose(x.mean(0).numpy(), fn.mean[0].numpy(), rtol=0.05)
        np.testing.assert_allclose(x.var(0).numpy(), fn.variance[0].numpy(), rtol=0.12)
