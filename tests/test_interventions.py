import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from cradle_pyro import CradleInputError, ModelConfig, PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.counterfactuals import counterfactual
from cradle_pyro.inference.effects import data_ate, model_ate, sample_cells
from cradle_pyro.inference.interventions import intervene


@pytest.fixture(scope="module")
def run(small_screen):
    data = PerturbationData.from_anndata(small_screen, doublets=False, split="unseen-combinations",
                                         heldout_fraction=0.5, seed=0)
    return fit(data, TrainConfig(epochs=3, num_particles=2, progress=False),
               ModelConfig(latent_dim=4, hidden_dim=32))


def _trace(fn, seed, **kw):
    pyro.set_rng_seed(seed)
    return poutine.trace(fn).get_trace(**kw)


def test_do_artifact_changes_only_what_is_downstream(run):
    model, data = run.model, run.data
    batch = data.batch(np.arange(40))
    kw = dict(counts=None, dosage=batch.dosage, artifact=batch.artifact, library=batch.library)
    factual = _trace(model, 7, **kw)
    flipped = 1.0 - batch.artifact
    do_tr = _trace(intervene(model, artifact=flipped), 7, **kw)
    for site in ("effect", "mask", "artifact_effect", "basal", "dosage"):
        assert torch.equal(factual.nodes[site]["value"], do_tr.nodes[site]["value"]), site
    assert torch.equal(do_tr.nodes["artifact"]["value"], flipped)
    assert not any(name.endswith("__CF") for name in do_tr.nodes)
    z_f, z_d = factual.nodes["_RETURN"]["value"], do_tr.nodes["_RETURN"]["value"]
    assert not torch.allclose(z_f, z_d)
    assert not torch.equal(factual.nodes["counts"]["value"], do_tr.nodes["counts"]["value"])
    # friendly values
    clean = _trace(intervene(model, artifact="clean", artifact_names=data.artifact_names), 7, **kw)
    assert clean.nodes["artifact"]["value"].sum() == 0


def test_do_composes_with_condition_and_predictive(run):
    model = run.model
    clean = intervene(model, artifact="clean")
    basal = torch.zeros(5, model.latent_dim)
    tr = poutine.trace(poutine.condition(clean, data={"basal": basal})).get_trace(n_cells=5)
    assert torch.equal(tr.nodes["basal"]["value"], basal)
    pred = Predictive(clean, guide=run.guide, num_samples=3, return_sites=["counts", "artifact"])
    out = pred(n_cells=5, library=torch.full((5,), 1000.0))
    assert out["counts"].shape == (3, 5, model.n_genes)
    assert out["artifact"].sum() == 0


def test_unseen_combination_ate_has_one_row_per_gene(run):
    data = run.data
    held = sorted(set(data.conditions[data.split == "test"]) - {"control"})
    assert held and all("+" in c for c in held)
    ate = model_ate(run.model, run.guide, data, held, num_draws=20, n_cells=50)
    assert ate.shape == (len(held), data.n_genes) and np.isfinite(ate.to_numpy()).all()
    assert list(ate.columns) == data.gene_names
    # common random numbers: control vs itself is exactly zero
    zero = model_ate(run.model, run.guide, data, [data.control_label], num_draws=10, n_cells=50)
    assert np.abs(zero.to_numpy()).max() == 0
    obs = data_ate(data, held, split="test")
    assert obs.shape == ate.shape
    with pytest.raises(CradleInputError, match="unknown"):
        model_ate(run.model, run.guide, data, ["NOPE+P0"], n_cells=10)


def test_sample_cells_returns_anndata_with_the_intervention(run):
    cells = sample_cells(run.model, run.guide, run.data, "P0+P1", n=50, artifact="clean", seed=1)
    assert cells.shape == (50, run.data.n_genes)
    assert (cells.obs["perturbation"] == "P0+P1").all()
    assert np.allclose(np.asarray(cells.X.sum(1)).ravel() > 0, True)
    again = sample_cells(run.model, run.guide, run.data, "P0+P1", n=50, artifact="clean", seed=1)
    assert (cells.X != again.X).nnz == 0


def test_counterfactual_is_aligned_and_factual_beside_it(run):
    cf = counterfactual(run.model, run.guide, run.data, artifact="clean", split="val")
    idx = run.data.indices("val")
    assert list(cf.obs_names) == [run.data.obs_names[i] for i in idx]
    assert cf.layers["expected"].shape == cf.layers["factual_expected"].shape == cf.shape
    art = cf.obs["observed_artifact"].to_numpy() > 0
    diff = np.abs(cf.layers["expected"] - cf.layers["factual_expected"]).sum(1)
    # removing the artifact changes artifact cells; clean cells stay as they were
    assert diff[art].min() > 0 and np.allclose(diff[~art], 0, atol=1e-3)
    switched = counterfactual(run.model, run.guide, run.data, dosage="P0", split="val")
    assert (switched.obs["do_dosage"] == "P0").all()


def test_interventions_on_any_site_hard_and_soft(run):
    import pyro.distributions as dist

    model = run.model
    tr = poutine.trace(intervene(model, basal=torch.zeros(model.latent_dim))).get_trace(n_cells=4)
    assert tr.nodes["basal"]["value"].abs().max() == 0 and "basal__CF" not in tr.nodes
    effect = torch.ones(model.n_perturbations, model.latent_dim)
    tr = poutine.trace(intervene(model, effect=effect, dosage="P0")).get_trace(n_cells=3)
    assert torch.equal(tr.nodes["effect"]["value"], effect)
    tr = poutine.trace(intervene(model, library=torch.tensor(500.0))).get_trace(n_cells=3)
    assert torch.equal(tr.nodes["library"]["value"], torch.full((3,), 500.0))
    soft = poutine.trace(intervene(model, basal=dist.Normal(3.0, 0.01))).get_trace(n_cells=50)
    assert abs(float(soft.nodes["basal"]["value"].mean()) - 3.0) < 0.05
    # a soft intervention survives replay of a guide trace (it is not overwritten)
    gtr = poutine.trace(run.guide).get_trace(n_cells=50)
    replayed = poutine.trace(poutine.replay(intervene(model, dosage=dist.Bernoulli(1.0)),
                                            trace=gtr)).get_trace(n_cells=50)
    assert replayed.nodes["dosage"]["value"].min() == 1.0
    # composes with poutine.condition around it
    cond = poutine.condition(intervene(model, artifact="clean"),
                             data={"basal": torch.zeros(5, model.latent_dim)})
    tr = poutine.trace(cond).get_trace(n_cells=5)
    assert tr.nodes["basal"]["value"].abs().max() == 0 and tr.nodes["artifact"]["value"].max() == 0
    with pytest.raises(CradleInputError, match="cannot intervene on"):
        intervene(model, counts=torch.zeros(3))


def test_artifact_intervention_on_a_model_without_artifact_path_is_refused():
    from cradle_pyro import CradleModel, ModelConfig

    sams = CradleModel(20, 2, 1, ModelConfig(model="sams"))
    with pytest.raises(CradleInputError, match="no path from artifact to counts"):
        intervene(sams, artifact="clean")
