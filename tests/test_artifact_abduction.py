"""Abduction of the artifact state from the counts and the QC evidence together."""

import math

import numpy as np
import torch
from pyro import poutine

from cradle_pyro import ModelConfig
from cradle_pyro.distributions import binary_states
from cradle_pyro.guides import make_guide
from cradle_pyro.inference.artifacts import (full_log_posterior, qc_log_posterior,
                                             state_log_evidence)
from cradle_pyro.model import CradleModel

# no global latents: p(counts | artifact) integrates over basal alone, so a prior
# Monte Carlo on a 1-d basal state is an exact enough reference
TINY = ModelConfig(model="cvae", latent_dim=1, hidden_dim=8, likelihood="poisson",
                   library_effects=False, artifact_state="latent", artifact_causes=("damaged",))


def _tiny(seed=0, n=4, genes=5):
    torch.manual_seed(seed)
    model = CradleModel(genes, 1, 1, TINY, n_qc_covariates=1, qc_covariate_names=["logit_pct_mt"])
    guide = make_guide("correlated", model)
    # a proposal unlike the prior, q(basal) = N(0.3, 1.3²) for every cell and state: the
    # estimate is right only if the q term is in the importance weight
    last = guide.encoder.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.3, math.log(math.expm1(1.3 - 1e-4))]))
    counts = torch.poisson(torch.full((n, genes), 4.0))
    kwargs = dict(counts=counts, dosage=torch.zeros(n, 1), artifact=torch.zeros(n, 1),
                  library=counts.sum(-1), qc=torch.randn(n, 1), flags=None, cell_index=None,
                  num_cells=None, reference=None)
    return model, guide, kwargs


def _prior_monte_carlo(model, kwargs, state, draws=40_000):
    """log p(counts, qc | artifact = state) = log E_{basal ~ prior} p(counts, qc | basal, state)."""
    n = kwargs["counts"].shape[0]
    rows = {k: (v.repeat_interleave(draws, 0) if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    trace = poutine.trace(poutine.condition(model, data={"artifact": state.expand(n * draws, -1)})
                          ).get_trace(**rows)
    lp = sum(trace.nodes[name]["fn"].log_prob(trace.nodes[name]["value"]) for name in ("counts", "qc"))
    lp = lp.double().reshape(n, draws)
    return (lp.logsumexp(1) - math.log(draws)).numpy()


def test_state_evidence_is_the_marginal_likelihood_of_counts_and_qc():
    model, guide, kwargs = _tiny()
    with torch.no_grad():  # the covariate follows the basal state: the evidence must integrate it
        model.artifact_evidence.qc_basal.fill_(0.8)
    with torch.no_grad():
        estimate = state_log_evidence(model, guide, kwargs, num_particles=4000).numpy()
        for s, state in enumerate(binary_states(1)):
            reference = _prior_monte_carlo(model, kwargs, state)
            np.testing.assert_allclose(estimate[:, s], reference, atol=0.05)
    # the two states differ for these cells, so the test can tell them apart
    assert np.abs(estimate[:, 1] - estimate[:, 0]).max() > 0.2


def test_full_posterior_is_prior_times_evidence():
    model, guide, kwargs = _tiny(seed=1)
    torch.manual_seed(3)
    with torch.no_grad():
        full = full_log_posterior(model, guide, kwargs, num_particles=16)
        torch.manual_seed(3)
        prior = torch.log(torch.stack([1 - model.artifact_freq[0], model.artifact_freq[0]]))
        by_hand = prior + state_log_evidence(model, guide, kwargs, 16)
        assert qc_log_posterior(model, guide, kwargs).shape == full.shape
    by_hand = by_hand - by_hand.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(full, by_hand)
    assert torch.allclose(full.exp().sum(-1), torch.ones(full.shape[0]))


def test_cleaning_against_twins_scores_each_group():
    import anndata as ad
    import pandas as pd

    from cradle_pyro.inference.counterfactuals import cleaning_against_twins

    rng = np.random.default_rng(0)
    twin = rng.gamma(2.0, 5.0, (6, 30))
    damaged = twin * np.r_[np.full(15, 0.3), np.ones(15)]  # half the genes lost
    names = [f"c{i}" for i in range(6)]
    kind = ["damaged", "damaged", "none", "none", "none", "none"]
    factual = np.vstack([damaged[:2], twin[2:]])
    cleaned = np.vstack([twin[0], damaged[1], twin[2:4], 2 * twin[4:5] * np.r_[np.ones(15), np.full(15, 3.0)], twin[5]])
    twins = ad.AnnData(np.zeros((6, 30)), obs=pd.DataFrame({"artifact_kind": kind}, index=names),
                       layers={"clean_expected": twin})
    cf = ad.AnnData(np.zeros((6, 30)), obs=pd.DataFrame({"observed_artifact": [1, 0, 1, 0, 0, 0]},
                                                        index=names),
                    layers={"expected": cleaned, "factual_expected": factual})
    table = cleaning_against_twins(cf, twins)
    assert table.loc["damaged_flagged", "ratio"] == 0  # brought onto its twin
    assert table.loc["damaged_missed", "ratio"] == 1   # left as it was
    assert table.loc["damaged", "n"] == 2 and table.loc["clean_flagged_by_qc", "n"] == 1
    # a clean cell pushed away: factual distance 0 to its twin, so the group's ratio is infinite
    assert table.loc["clean_unflagged", "cf_mse"] > 0 and table.loc["clean_unflagged", "factual_mse"] == 0
