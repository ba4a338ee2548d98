"""ChiRho's handlers on the project's model agree with the project's own queries."""

import pytest
import torch
from pyro import poutine

pytest.importorskip("chirho", reason="ChiRho is the optional extra [chirho]; CI installs it")
from chirho.counterfactual.handlers import MultiWorldCounterfactual  # noqa: E402
from chirho.indexed.ops import IndexSet, gather, indices_of  # noqa: E402
from chirho.interventional.handlers import do  # noqa: E402
from chirho.observational.handlers import condition  # noqa: E402

import pyro  # noqa: E402

from cradle_pyro import PerturbationData  # noqa: E402
from cradle_pyro.inference import TrainConfig, fit  # noqa: E402
from cradle_pyro.inference.counterfactuals import counterfactual  # noqa: E402
from cradle_pyro.inference.interventions import intervene  # noqa: E402
from cradle_pyro.inference.worlds import PREDICTED, twin_world_means  # noqa: E402


@pytest.fixture(scope="module")
def trained(small_screen):
    data = PerturbationData.from_anndata(small_screen[:500].copy(), doublets=False)
    run = fit(data, TrainConfig(epochs=3, num_particles=1, progress=False))
    return run, data


def _cells(data, n=24):
    batch = next(data.batches(None, batch_size=n, shuffle=False))
    return dict(batch.model_kwargs(), reference=None)


def test_multiworld_do_matches_intervene(trained):
    run, data = trained
    kwargs = _cells(data)
    guide_trace = poutine.trace(run.guide).get_trace(**kwargs)
    clean = torch.zeros_like(kwargs["artifact"])
    with torch.no_grad(), MultiWorldCounterfactual():
        trace = poutine.trace(poutine.replay(do(actions={"artifact": clean})(run.model),
                                             trace=guide_trace)).get_trace(**dict(kwargs, **PREDICTED))
        mean = trace.nodes["counts"]["fn"].mean
        assert indices_of(mean, event_dim=1) == IndexSet(artifact={0, 1})  # a world dimension
        worlds = [gather(mean, IndexSet(artifact={w}), event_dim=1).reshape(24, -1) for w in (0, 1)]
    with torch.no_grad():
        ours = poutine.trace(poutine.replay(intervene(run.model, artifact="clean"),
                                            trace=guide_trace)).get_trace(**dict(kwargs, **PREDICTED))
        factual = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(
            **dict(kwargs, **PREDICTED))
    torch.testing.assert_close(worlds[1], ours.nodes["counts"]["fn"].mean)
    torch.testing.assert_close(worlds[0], factual.nodes["counts"]["fn"].mean)
    artifact_cells = kwargs["artifact"].amax(-1) > 0
    assert artifact_cells.any()
    moved = (worlds[1] - worlds[0]).abs().amax(-1)
    assert (moved[artifact_cells] > 1e-4).all() and (moved[~artifact_cells] < 1e-5).all()


def test_twin_worlds_match_the_projects_counterfactual(trained):
    run, data = trained
    pyro.set_rng_seed(11)  # counterfactual() draws its guide trace first from this seed
    kwargs = _cells(data, n=512)
    guide_trace = poutine.trace(run.guide).get_trace(**kwargs)
    factual, clean = twin_world_means(run.model, guide_trace, kwargs,
                                      {"artifact": torch.zeros_like(kwargs["artifact"])})
    ours = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=1, seed=11,
                          batch_size=512)
    torch.testing.assert_close(clean, torch.as_tensor(ours.layers["expected"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(factual, torch.as_tensor(ours.layers["factual_expected"]),
                               rtol=1e-5, atol=1e-5)


def test_chirho_condition_observes_the_counts(trained):
    run, data = trained
    kwargs = _cells(data)
    counts = kwargs["counts"]
    model = condition(data={"counts": counts})(run.model)
    with torch.no_grad():
        conditioned = poutine.trace(model).get_trace(**dict(kwargs, counts=None))
        plain = poutine.trace(poutine.replay(run.model, trace=conditioned)).get_trace(**kwargs)
    site = conditioned.nodes["counts"]
    assert site["is_observed"] and torch.equal(site["value"], counts)
    torch.testing.assert_close(conditioned.log_prob_sum(), plain.log_prob_sum())
