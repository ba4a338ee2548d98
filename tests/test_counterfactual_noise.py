"""Counterfactual counts abduct the cell's own count noise: the factual world is the cell."""

import numpy as np
import pytest
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.counterfactuals import abducted_counts, counterfactual


@pytest.fixture(scope="module")
def screen(small_screen):
    return PerturbationData.from_anndata(small_screen[:400].copy(), doublets=False)


def _observed(data):
    return np.asarray(data.counts.todense() if hasattr(data.counts, "todense") else data.counts)


@pytest.mark.parametrize("likelihood", ["nb", "poisson", "zinb"])
def test_factual_is_the_observed_cell_and_do_nothing_returns_it(screen, likelihood):
    run = fit(screen, TrainConfig(epochs=1, num_particles=1, progress=False),
              ModelConfig(likelihood=likelihood))
    observed = _observed(screen)
    cf = counterfactual(run.model, run.guide, screen, artifact="clean", seed=1)
    order = [screen.obs_names.index(c) for c in cf.obs_names]
    np.testing.assert_array_equal(cf.layers["factual"].toarray(), observed[order])
    # clean cells: removing an artifact they do not have changes nothing, count for count
    clean = cf.obs["observed_artifact"].to_numpy() == 0
    np.testing.assert_array_equal(cf.X.toarray()[clean], observed[order][clean])
    moved = (cf.X.toarray()[~clean] != observed[order][~clean]).mean()
    assert moved > 0.01, moved  # artifact cells do move
    nothing = counterfactual(run.model, run.guide, screen, seed=2)
    np.testing.assert_array_equal(nothing.X.toarray(), observed[order])


def test_abducted_noise_is_uniform_within_the_observed_count():
    """Where the world changes, the counterfactual counts follow the counterfactual distribution:
    abducting u from a draw x ~ F and pushing it through G gives draws of G."""
    import pyro.distributions as dist

    torch.manual_seed(0)
    fa = dist.NegativeBinomial(total_count=torch.full((20000,), 3.0), logits=torch.full((20000,), 0.5))
    cf = dist.NegativeBinomial(total_count=torch.full((20000,), 3.0), logits=torch.full((20000,), 1.5))
    x = fa.sample()
    y = abducted_counts(fa, cf, x)
    assert abs(y.mean().item() - cf.mean[0].item()) < 0.05 * cf.mean[0].item()
    assert abs(y.var().item() - cf.variance[0].item()) < 0.1 * cf.variance[0].item()
    assert (y >= x).float().mean().item() == 1.0  # a larger mean moves every count up or keeps it


def test_latent_artifact_state_factual_is_the_observed_cell(screen):
    """With the artifact state latent, abduction draws it, then the count noise under it."""
    run = fit(screen, TrainConfig(epochs=1, num_particles=1, progress=False),
              ModelConfig(artifact_state="latent"))
    observed = _observed(screen)
    for abduct_from in ("counts+qc", "qc"):
        cf = counterfactual(run.model, run.guide, screen, artifact="clean", seed=1,
                            abduct_from=abduct_from)
        order = [screen.obs_names.index(c) for c in cf.obs_names]
        np.testing.assert_array_equal(cf.layers["factual"].toarray(), observed[order])
        assert cf.uns["abduct_from"] == abduct_from and cf.obs["artifact_p_any"].between(0, 1).all()
        nothing = counterfactual(run.model, run.guide, screen, seed=2, abduct_from=abduct_from)
        np.testing.assert_array_equal(nothing.X.toarray(), observed[order])
