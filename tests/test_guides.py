import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import pytest

from cradle_pyro import (BasalGuide, CombinedGuide, CorrelatedGuide, CradleModel, MeanFieldGuide, ModelConfig,
                         PerturbationData)
from cradle_pyro.guides import MaskGuide, basal_posterior_of
from cradle_pyro.inference import CradleELBO, TrainConfig, fit


def _data(screen):
    return PerturbationData.from_anndata(screen, doublets=False, seed=0)


def test_guides_sample_the_model_latents(small_screen):
    data = _data(small_screen)
    batch = next(data.batches("train", 32, seed=0))
    model = CradleModel.from_data(data)
    for G in (CorrelatedGuide, MeanFieldGuide):
        guide = G(model, data.gene_mean, data.gene_std)
        tr = poutine.trace(guide).get_trace(**batch.model_kwargs())
        latents = [k for k, v in tr.nodes.items() if v["type"] == "sample" and k not in
                   ("cells", "perturbations", "artifact_kinds")]
        assert sorted(latents) == ["artifact_effect", "basal", "effect", "gene_effect",
                                   "library_effect", "mask"]
        mask = tr.nodes["mask"]["value"]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        # the basal-posterior protocol the objective's alignment term uses
        assert basal_posterior_of(guide) is guide
        hx = guide.basal_features(batch.counts, batch.library)
        assert guide.basal_features(batch.counts, batch.library) is hx  # memoised per batch
        q = guide.basal_distribution(hx, batch.dosage, batch.artifact, tr.nodes["effect"]["value"],
                                     tr.nodes["mask"]["value"], tr.nodes["artifact_effect"]["value"])
        assert q.loc.shape == (32, model.latent_dim)


def test_correlated_effect_depends_on_mask(small_screen):
    data = _data(small_screen)
    model = CradleModel.from_data(data)
    guide = CorrelatedGuide(model)
    m0 = torch.zeros(data.n_perturbations, model.latent_dim)
    m1 = torch.ones_like(m0)
    assert not torch.allclose(guide.effect_distribution(m0).loc, guide.effect_distribution(m1).loc)


def test_autonormal_for_globals_with_amortised_basal_encoder(small_screen):
    """A user brings their own guide: AutoNormal on the globals + an amortised q(basal | x)."""
    data = _data(small_screen)
    model = CradleModel.from_data(data, ModelConfig(model="cpa", latent_dim=4, hidden_dim=32))
    guide = CombinedGuide(AutoNormal(poutine.block(model, expose=["effect", "gene_effect", "library_effect"])),
                          BasalGuide(model, data.gene_mean, data.gene_std))
    run = fit(data, TrainConfig(epochs=3, batch_size=128, num_particles=2, progress=False),
              model=model, guide=guide)
    assert run.history["loss"].iloc[-1] < run.history["loss"].iloc[0]
    tr = poutine.trace(guide).get_trace(**next(data.batches("train", 16)).model_kwargs())
    assert tr.nodes["effect"]["value"].shape == (data.n_perturbations, 4)
    assert tr.nodes["basal"]["value"].shape == (16, 4)


def test_alignment_is_computed_by_the_objective_for_a_composed_guide(small_screen):
    """AutoNormal on the globals + BasalGuide: the alignment term is non-zero, not silently 0."""
    data = _data(small_screen)
    model = CradleModel.from_data(data, ModelConfig(model="cradle", latent_dim=4, hidden_dim=32))
    guide = CombinedGuide(AutoNormal(poutine.block(model, expose=["effect", "gene_effect", "library_effect", "artifact_effect"])),
                          MaskGuide(model), BasalGuide(model, data.gene_mean, data.gene_std))
    objective = CradleELBO(num_particles=2, beta=1.0).for_data(data)
    batch = next(data.batches("train", 64, seed=0))
    objective(model, guide, **batch.model_kwargs())
    assert objective.last_terms["alignment"] > 0
    run = fit(data, TrainConfig(epochs=2, num_particles=2, beta=1.0, progress=False),
              model=model, guide=guide)
    assert (run.history["alignment"] > 0).all()


def test_a_guide_missing_a_model_site_is_refused_by_name(small_screen):
    data = _data(small_screen)
    model = CradleModel.from_data(data, ModelConfig(model="cradle", latent_dim=4, hidden_dim=32))
    guide = CombinedGuide(AutoNormal(poutine.block(model, expose=["effect", "gene_effect", "library_effect", "artifact_effect"])),
                          BasalGuide(model, data.gene_mean, data.gene_std))
    batch = next(data.batches("train", 32, seed=0))
    with pytest.raises(ValueError, match=r"does not sample the model's latent site\(s\) \['mask'\]"):
        CradleELBO(num_particles=1, beta=0.0).for_data(data)(model, guide, **batch.model_kwargs())


def test_alignment_without_a_basal_posterior_is_refused(small_screen):
    data = _data(small_screen)
    model = CradleModel.from_data(data, ModelConfig(model="cradle", latent_dim=4, hidden_dim=32))
    inner = CorrelatedGuide(model, data.gene_mean, data.gene_std)

    def opaque_guide(**kwargs):  # samples every site but hides how it encodes basal
        return inner(**kwargs)

    batch = next(data.batches("train", 32, seed=0))
    with pytest.raises(ValueError, match="needs a guide exposing its basal posterior"):
        CradleELBO(num_particles=1, beta=1.0).for_data(data)(model, opaque_guide, **batch.model_kwargs())
    # with the weight at 0 the same guide trains
    loss = CradleELBO(num_particles=1, beta=0.0).for_data(data)(model, opaque_guide, **batch.model_kwargs())
    assert torch.isfinite(loss)


def test_a_prior_that_samples_its_scale_trains_with_particles_and_a_composed_guide():
    """Hierarchical prior: effect ~ Normal(0, tau), tau ~ HalfNormal(1), tau a sample site."""
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer.autoguide import AutoNormal

    from cradle_pyro import PerturbationData, simulate_screen
    from cradle_pyro.config import ModelConfig
    from cradle_pyro.guides import CombinedGuide, CorrelatedGuide
    from cradle_pyro.model import CradleModel
    from cradle_pyro.priors import sampled_scale
    from cradle_pyro.inference import TrainConfig, fit
    from cradle_pyro.inference.objective import CradleELBO

    data = PerturbationData.from_anndata(simulate_screen(400, 60, seed=0), doublets=False)
    cfg = ModelConfig(latent_dim=4, hidden_dim=16,
                      priors={"effect": sampled_scale("tau", dist.HalfNormal(1.0))})
    model = CradleModel.from_data(data, cfg)
    # the default guide has no factor for tau: refused on the first step, naming it
    with pytest.raises(ValueError, match="tau"):
        fit(data, TrainConfig(epochs=1, num_particles=5, progress=False), cfg)
    guide = CombinedGuide(CorrelatedGuide(model, data.gene_mean, data.gene_std),
                          AutoNormal(poutine.block(model, expose=["tau"])))
    objective = CradleELBO(num_particles=5).for_data(data)
    batch = next(data.batches("train", 64, seed=0))
    model_trace, guide_trace = objective.traces(model, guide, **batch.model_kwargs())
    assert model_trace.nodes["tau"]["value"].shape == (5, 1)          # one tau per particle
    assert model_trace.nodes["effect"]["value"].shape[:2] == (5, data.n_perturbations)
    run = fit(data, TrainConfig(epochs=3, num_particles=5, progress=False), cfg,
              model=model, guide=guide)
    assert np.isfinite(run.history["loss"]).all()
    tau = [p for name, p in run.guide.parts[1].named_parameters() if "tau" in name]
    assert tau and all(torch.isfinite(p).all() for p in tau)
