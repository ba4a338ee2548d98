"""The latent artifact state: sites, exact posterior, recovery, cleaning, saving."""

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy import stats
from sklearn.metrics import roc_auc_score

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.distributions import BinaryStates, binary_states
from cradle_pyro.model import CradleModel
from cradle_pyro.inference import (TrainConfig, add_artifact_posterior, artifact_posterior, counterfactual, fit,
                       load_run, save_run)
from cradle_pyro.inference.interventions import intervene

LATENT = ModelConfig(artifact_state="latent")
WITH_FLAGS = ModelConfig(artifact_state="latent", artifact_evidence="both")


@pytest.fixture(scope="module")
def screen():
    adata = simulate_screen(n_cells=1500, n_genes=200, seed=3, keep_expected=True)
    data = PerturbationData.from_anndata(adata, doublets=True, seed=3)
    return adata, data


@pytest.fixture(scope="module")
def latent_run(screen):
    _, data = screen
    return fit(data, TrainConfig(epochs=30, seed=3, progress=False), LATENT)


def test_sites_and_shapes():
    model = CradleModel(20, 2, 2, WITH_FLAGS, n_qc_covariates=3)
    tr = poutine.trace(model).get_trace(n_cells=5)
    K = len(LATENT.artifact_causes)
    assert not tr.nodes["artifact"]["is_observed"]
    assert tr.nodes["artifact"]["value"].shape == (5, K)
    assert tr.nodes["artifact_flag"]["value"].shape == (5, 2)
    assert tr.nodes["qc"]["value"].shape == (5, 3)
    assert tr.nodes["flag_sensitivity"]["value"].shape == (K, 2)
    assert tr.nodes["flag_specificity"]["value"].shape == (2,)
    assert tr.nodes["artifact_effect"]["value"].shape == (K, model.latent_dim)
    # default evidence: the covariates only (no flag sites)
    default = poutine.trace(CradleModel(20, 2, 2, LATENT, n_qc_covariates=3)).get_trace(n_cells=5)
    assert "artifact_flag" not in default.nodes and "flag_sensitivity" not in default.nodes
    assert default.nodes["qc"]["value"].shape == (5, 3)
    # observed-label model: no evidence sites, the artifact site holds the flags
    observed = poutine.trace(CradleModel(20, 2, 2)).get_trace(n_cells=5)
    assert "artifact_flag" not in observed.nodes and observed.nodes["artifact"]["value"].shape == (5, 2)


def test_binary_states_is_a_normalised_distribution():
    torch.manual_seed(0)
    logits = torch.randn(4, 8)
    d = BinaryStates(logits)
    states = binary_states(3)
    total = torch.stack([d.log_prob(s.expand(4, 3)).exp() for s in states]).sum(0)
    assert torch.allclose(total, torch.ones(4), atol=1e-5)
    draws = d.sample((20000,))
    assert torch.allclose(draws.mean(0), d.marginals(), atol=0.02)


def test_posterior_is_bayes_rule_by_hand():
    """One cause, one flag, one covariate: p(a=1 | flag, x) from scipy by hand.

    Noisy-OR: a clean cell is flagged with probability 1 − specificity, a
    damaged one with 1 − specificity · (1 − sensitivity)."""
    cfg = ModelConfig(artifact_state="latent", artifact_causes=("damaged",), artifact_evidence="both")
    model = CradleModel(10, 1, 1, cfg, artifact_freq=[0.1], n_qc_covariates=1,
                        qc_covariate_names=["logit_pct_mt"])
    ev = model.artifact_evidence
    sens, spec = torch.tensor([[0.8]]), torch.tensor([0.95])
    flags = torch.tensor([[1.0], [0.0], [1.0]])
    qc = torch.tensor([[3.0], [0.1], [0.0]])
    q = ev.posterior(model.artifact_freq, flags, qc, sens, spec).marginals()[:, 0]
    shift = float(ev.qc_shift.detach()[0, 0])
    df = float(ev.qc_df.detach())
    stretch = float(np.exp(float(ev.qc_log_scale_shift.detach()[0, 0])))
    for i in range(3):
        f, x = float(flags[i, 0]), float(qc[i, 0])
        keep = 0.95 * (1 - 0.8)
        like1 = (1 - keep if f else keep) * stats.t.pdf(x, df, shift, stretch)
        like0 = (0.05 if f else 0.95) * stats.t.pdf(x, df, 0.0, 1.0)
        expected = 0.1 * like1 / (0.1 * like1 + 0.9 * like0)
        assert float(q[i].detach()) == pytest.approx(expected, rel=1e-4)


def test_posterior_recovers_injected_artifacts(screen, latent_run):
    """AUROC of each cause's posterior against the injected truth (that kind vs clean)."""
    adata, data = screen
    post = artifact_posterior(latent_run.model, latent_run.guide, data)
    kind = adata.obs["artifact_kind"].astype(str).reindex(post.index).to_numpy()
    for cause, floor in (("damaged", 0.95), ("low_complexity", 0.95), ("doublet", 0.75)):
        sel = (kind == cause) | (kind == "none")
        assert roc_auc_score(kind[sel] == cause, post.loc[sel, f"p_{cause}"]) > floor, cause
    # the flags are evidence, not the state: clean cells QC flagged mostly come out clean
    flagged_clean = (kind == "none") & (post.filter(like="flag_").max(1).to_numpy() > 0)
    assert flagged_clean.sum() >= 3
    assert post.loc[flagged_clean, "p_any"].mean() < 0.5
    assert post.loc[kind == "damaged", "p_damaged"].mean() > 0.75


def test_cleaning_leaves_abducted_clean_cells_alone_and_moves_damaged_ones(screen, latent_run):
    adata, data = screen
    cf = counterfactual(latent_run.model, latent_run.guide, data, artifact="clean", num_samples=2,
                        seed=0)
    assert "artifact_p_damaged" in cf.obs and "artifact_p_any" in cf.obs
    surely_clean = cf.obs["artifact_p_any"].to_numpy() < 1e-3
    assert surely_clean.sum() > 100
    # abducted clean (all but about one draw in a thousand): nothing to remove, nothing moves
    moved = ~np.isclose(cf.layers["expected"], cf.layers["factual_expected"], rtol=1e-5,
                        atol=1e-5).all(1)
    assert moved[surely_clean].mean() < 0.01
    kind = adata.obs["artifact_kind"].astype(str).reindex(cf.obs_names).to_numpy()
    damaged = kind == "damaged"
    mt = np.array([g.startswith("MT-") for g in data.gene_names])

    def mt_share(x):
        return x[:, mt].sum(1) / x.sum(1)

    # do(artifact = clean) pulls the damaged cells' mitochondrial share towards the twins'
    twin = mt_share(adata[cf.obs_names].layers["clean_expected"][damaged])
    before = np.abs(mt_share(cf.layers["factual_expected"][damaged]) - twin).mean()
    after = np.abs(mt_share(cf.layers["expected"][damaged]) - twin).mean()
    assert after < 0.5 * before


def test_do_artifact_names_the_causes():
    model = CradleModel(20, 2, 1, LATENT, n_qc_covariates=2)
    tr = poutine.trace(intervene(model, artifact="doublet")).get_trace(n_cells=3)
    assert tr.nodes["artifact"]["value"].tolist() == [[0.0, 0.0, 1.0]] * 3


def test_observed_model_has_no_posterior(screen):
    _, data = screen
    run = fit(data, TrainConfig(epochs=1, progress=False))
    with pytest.raises(Exception, match="artifact_state='latent'"):
        artifact_posterior(run.model, run.guide, data)


def test_saved_latent_run_gives_the_same_posterior(tmp_path, screen, latent_run):
    adata, data = screen
    path = save_run(latent_run, tmp_path / "run")
    again = load_run(path, adata=adata)
    assert again.data.qc_covariate_names == data.qc_covariate_names
    a = artifact_posterior(latent_run.model, latent_run.guide, data)
    b = artifact_posterior(again.model, again.guide, again.data)
    np.testing.assert_allclose(a.to_numpy(), b.loc[a.index].to_numpy(), atol=1e-5)
    # into obs beside the flags, without touching anything else
    view = adata.copy()
    before = list(view.obs.columns)
    add_artifact_posterior(view, again.model, again.guide, again.data)
    assert list(view.obs.columns)[:len(before)] == before
    np.testing.assert_allclose(view.obs["cradle_p_damaged"].to_numpy(), a["p_damaged"].to_numpy(),
                               atol=1e-5)


def test_qc_covariates_follow_the_basal_state():
    """A high mitochondrial share that the cell's biology predicts does not convict it;
    the same share in a cell whose biology does not predict it does. The doublet score
    measures an artifact and does not follow the basal state."""
    names = ["log_total_counts", "logit_pct_mt", "doublet_score"]
    cfg = ModelConfig(artifact_state="latent", latent_dim=2)
    model = CradleModel(10, 1, 1, cfg, artifact_freq=[0.05] * 3, n_qc_covariates=3,
                        qc_covariate_names=names)
    ev = model.artifact_evidence
    with torch.no_grad():
        ev.qc_basal.copy_(torch.tensor([[-2.0, 3.0, 3.0], [0.0, 0.0, 0.0]]))
    basal = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loc = ev.covariate_distribution(torch.zeros(2, 3), basal).loc
    assert torch.allclose(loc[0] - loc[1], torch.tensor([-2.0, 3.0, 0.0]))
    qc = torch.tensor([[-2.0, 3.0, 0.0], [-2.0, 3.0, 0.0]])  # same covariates, different biology
    p = ev.posterior(model.artifact_freq, None, qc, None, None, basal).marginals().detach()
    damaged = cfg.artifact_causes.index("damaged")
    assert p[0, damaged] < 0.1 < 0.5 < p[1, damaged]


def test_a_run_saved_before_the_biological_part_loads_without_it(tmp_path, screen, latent_run):
    """Runs saved before qc_basal existed load with it at zero (what they were trained with)."""
    _, data = screen
    path = save_run(latent_run, tmp_path / "run")
    state = torch.load(path / "model.pt")
    old = {k: v for k, v in state.items() if "qc_basal" not in k and "qc_biological" not in k}
    torch.save(old, path / "model.pt")
    run = load_run(path)
    assert float(run.model.artifact_evidence.qc_basal.abs().sum()) == 0.0
    assert run.model.artifact_evidence.qc_biological.tolist()[-1] == 0.0  # the doublet score
