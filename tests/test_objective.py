import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from cradle_pyro import CorrelatedGuide, CradleModel, ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import CradleELBO, iwelbo


class FixValues(Messenger):
    """Like poutine.replay from a dict: the sites keep being latent, with given values."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


@pytest.fixture(scope="module")
def tiny():
    adata = simulate_screen(n_cells=96, n_genes=40, n_singles=4, n_combinations=2, latent_dim=4,
                            n_truth_cells=10, seed=11)
    adata.obs["split"] = "train"
    return PerturbationData.from_anndata(adata, split="split", doublets=False, seed=0)


@pytest.mark.parametrize("class_balance", [None, 0.5])
def test_minibatch_objective_is_unbiased_for_the_full_data_objective(tiny, class_balance):
    """Average of minibatch losses over a partition == full-batch loss, latents held fixed."""
    pyro.set_rng_seed(0)
    model = CradleModel.from_data(tiny, ModelConfig(latent_dim=4, hidden_dim=16))
    guide = CorrelatedGuide(model, tiny.gene_mean, tiny.gene_std)
    objective = CradleELBO(num_particles=1, beta=2.0, class_balance=class_balance).for_data(tiny)
    N = tiny.n_cells
    full = tiny.batch(np.arange(N), num_cells=N)
    trace = poutine.trace(guide).get_trace(**full.model_kwargs())
    fixed = {k: trace.nodes[k]["value"].detach()
             for k in ("effect", "mask", "gene_effect", "library_effect", "artifact_effect")}
    basal = trace.nodes["basal"]["value"].detach()

    def fixed_guide(**kw):
        return FixValues(dict(fixed, basal=basal[kw["cell_index"]]))(guide)(**kw)

    # the basal-posterior protocol the objective's alignment term reads
    fixed_guide.basal_features = guide.basal_features
    fixed_guide.basal_distribution = guide.basal_distribution

    with torch.no_grad():
        full_loss = objective(model, fixed_guide, **full.model_kwargs())
        full_terms = dict(objective.last_terms)
        parts = []
        for b in tiny.batches("train", batch_size=N // 4, seed=3):
            parts.append(float(objective(model, fixed_guide, **b.model_kwargs())))
    assert full_terms["alignment"] > 0
    assert np.mean(parts) == pytest.approx(float(full_loss), rel=1e-5)
    # and each minibatch alone is a different (noisy) estimate
    assert np.std(parts) > 1e-3 * abs(float(full_loss))


def test_plate_reweighting_charges_globals_to_treated_cells(tiny):
    objective = CradleELBO().for_data(tiny)
    batch = tiny.batch(np.arange(24), num_cells=tiny.n_cells)
    w = objective.site_scales(batch.dosage, batch.artifact, batch.num_cells)
    n_p = torch.as_tensor(tiny.perturbation_cell_counts())
    expected = tiny.n_cells / 24 * batch.dosage.sum(0) / n_p
    assert torch.allclose(w["effect"], expected)
    assert torch.allclose(w["mask"], expected)
    assert "counts" not in w  # class balancing off by default


def test_iwelbo_is_finite_and_at_least_the_single_sample_bound(tiny):
    pyro.set_rng_seed(0)
    model = CradleModel.from_data(tiny, ModelConfig(latent_dim=4, hidden_dim=16))
    guide = CorrelatedGuide(model, tiny.gene_mean, tiny.gene_std)
    pyro.set_rng_seed(1)
    k1 = iwelbo(model, guide, tiny, split="train", num_particles=1)
    pyro.set_rng_seed(1)
    k50 = iwelbo(model, guide, tiny, split="train", num_particles=50)
    assert k50.shape == (tiny.n_cells,) and np.isfinite(k50).all()
    assert k50.mean() > k1.mean()


def _leakage_inputs(tiny, rows):
    from cradle_pyro.inference.objective import _location

    pyro.set_rng_seed(0)
    model = CradleModel.from_data(tiny, ModelConfig(latent_dim=4, hidden_dim=16))
    guide = CorrelatedGuide(model, tiny.gene_mean, tiny.gene_std)
    batch = tiny.batch(rows, num_cells=tiny.n_cells)
    kw = batch.model_kwargs()
    trace = poutine.trace(guide).get_trace(**kw)
    loc = _location(trace.nodes["basal"]["fn"])  # the tensor the objective reads
    keys = [tuple(r) for r in np.concatenate([batch.dosage.numpy(), batch.artifact.numpy()], 1)]
    return trace, kw, loc, keys


def test_independence_penalty_is_the_group_means_negative_log_density(tiny):
    """First batch: (N/B) · Σ_g n_g · ½‖mean of q(basal) locations in g‖², groups = (dosage, artifact)."""
    trace, kw, loc, keys = _leakage_inputs(tiny, np.arange(40))
    objective = CradleELBO(independence=3.0).for_data(tiny)
    value = float(objective.basal_leakage(trace, kw).detach())
    loc = loc.detach().reshape(40, -1).numpy()
    expected = 0.0
    for key in set(keys):
        rows = loc[[k == key for k in keys]]
        expected += len(rows) * 0.5 * (rows.mean(0) ** 2).sum()
    assert len(set(keys)) > 3  # several treatment groups in the batch
    assert value == pytest.approx(tiny.n_cells / 40 * expected, rel=1e-5)
    # the loss carries it with weight λ; λ = 0 leaves the ELBO alone
    assert float(CradleELBO(independence=0.0).basal_leakage(trace, kw)) == 0.0


def test_independence_penalty_pulls_each_cell_by_its_groups_running_mean(tiny):
    """The gradient for a cell is (N/B) × its group's mean over recent batches, not over this batch
    alone: a cell alone in its group in this batch is not pulled by its own location."""
    objective = CradleELBO(independence=1.0).for_data(tiny)
    first = _leakage_inputs(tiny, np.arange(0, 48))
    objective.basal_leakage(first[0], first[1])
    trace, kw, loc, keys = _leakage_inputs(tiny, np.arange(48, 96))
    loc.retain_grad()
    objective.basal_leakage(trace, kw).backward()
    grad, loc = loc.grad.reshape(48, -1), loc.detach().reshape(48, -1)
    first_loc = first[2].detach().reshape(48, -1)
    seen = {k: first_loc[[k == j for j in first[3]]] for k in set(first[3])}
    d = objective.group_means.decay
    for i, key in enumerate(keys):
        now = loc[[k == key for k in keys]]
        old = seen.get(key, now[:0])
        mean = (d * old.sum(0) + now.sum(0)) / (d * len(old) + len(now))
        assert torch.allclose(grad[i], tiny.n_cells / 48 * mean, atol=1e-5)
    singles = [i for i, k in enumerate(keys) if keys.count(k) == 1 and k in seen]
    assert singles  # some cells are alone in their group in this batch
    assert not torch.allclose(grad[singles[0]], tiny.n_cells / 48 * loc[singles[0]], atol=1e-3)
