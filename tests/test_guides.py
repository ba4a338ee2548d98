import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

from cradle_pyro import (BasalGuide, CombinedGuide, CorrelatedGuide, CradleModel, MeanFieldGuide, ModelConfig,
                         PerturbationData)
from inference import CradleELBO, TrainConfig, fit


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
        assert sorted(latents) == ["artifact_effect", "basal", "effect", "mask"]
        mask = tr.nodes["mask"]["value"]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        ret = tr.nodes["_RETURN"]["value"]
        assert ret["alignment_kl"].shape == (32,)
        assert (ret["alignment_kl"][~ret["has_reference"]] == 0).all()
        assert (ret["alignment_kl"] >= -1e-5).all()


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
    guide = CombinedGuide(AutoNormal(poutine.block(model, expose=["effect"])),
                          BasalGuide(model, data.gene_mean, data.gene_std))
    run = fit(data, TrainConfig(epochs=3, batch_size=128, num_particles=2, progress=False),
              model=model, guide=guide)
    assert run.history["loss"].iloc[-1] < run.history["loss"].iloc[0]
    tr = poutine.trace(guide).get_trace(**next(data.batches("train", 16)).model_kwargs())
    assert tr.nodes["effect"]["value"].shape == (data.n_perturbations, 4)
    assert tr.nodes["basal"]["value"].shape == (16, 4)
