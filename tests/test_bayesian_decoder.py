"""The decoder's output layer as a latent (``ModelConfig.bayesian_decoder``)."""

import pyro
import torch
from pyro import poutine

from cradle_pyro import CradleModel, ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.guides import DECODER_SCALE_START, make_guide
from cradle_pyro.inference import TrainConfig, fit, posterior_ate


def _batch(G=30, P=3, n=6):
    x = torch.poisson(torch.full((n, G), 2.0))
    return dict(counts=x, dosage=torch.eye(P)[torch.arange(n) % P], artifact=torch.zeros(n, 1),
                library=x.sum(1))


def test_site_shape_prior_and_that_it_sets_the_logits():
    pyro.set_rng_seed(0)
    model = CradleModel(30, 3, 1, ModelConfig(bayesian_decoder=True, hidden_dim=16,
                                              decoder_weight_scale=0.5))
    tr = poutine.trace(model).get_trace(**_batch())
    node = tr.nodes["decoder_weight"]
    assert tuple(node["value"].shape) == (30, 16) and not node["is_observed"]
    assert node["fn"].event_dim == 2 and torch.allclose(node["fn"].base_dist.scale,
                                                        torch.tensor(0.5))
    # the sampled weights, not the module's own, make the gene logits
    [(site, layer, shape)] = model.decoder_weight_sites()
    assert (site, shape) == ("decoder_weight", (30, 16)) and layer == len(model.decoder.net) - 1
    weight = torch.randn(30, 16)
    z = torch.randn(6, model.decoder_input_dim)
    linear = model.decoder.net[-1]
    expect = model.decoder.net[:-1](z) @ weight.T + linear.bias
    assert torch.allclose(model.decoder(z, {layer: weight}), expect, atol=1e-5)
    assert not torch.allclose(model.decoder(z), expect, atol=1e-3)
    # particles broadcast: one weight matrix per particle, shared by the particle's cells
    many = torch.randn(4, 1, 30, 16)
    out = model.decoder(z.expand(4, 6, -1), {layer: many})
    assert out.shape == (4, 6, 30)
    assert torch.allclose(out[2], model.decoder(z, {layer: many[2, 0]}), atol=1e-5)


def test_every_layer_a_latent():
    model = CradleModel(30, 3, 1, ModelConfig(bayesian_decoder=True, hidden_dim=16,
                                              bayesian_decoder_layers="all"))
    tr = poutine.trace(model).get_trace(**_batch())
    shapes = {s: tuple(tr.nodes[s]["value"].shape) for s, _, _ in model.decoder_weight_sites()}
    assert shapes == {"decoder_hidden_weight_0": (16, model.decoder_input_dim),
                      "decoder_weight": (30, 16)}
    guide = make_guide("correlated", model)
    gtr = poutine.trace(guide).get_trace(**_batch())
    assert all(tuple(gtr.nodes[s]["value"].shape) == v for s, v in shapes.items())


def test_off_by_default_and_the_guide_matches_the_model():
    plain = CradleModel(30, 3, 1, ModelConfig())
    assert "decoder_weight" not in poutine.trace(plain).get_trace(**_batch()).nodes
    model = CradleModel(30, 3, 1, ModelConfig(bayesian_decoder=True, hidden_dim=16))
    guide = make_guide("correlated", model)
    gtr = poutine.trace(guide).get_trace(**_batch())
    assert tuple(gtr.nodes["decoder_weight"]["value"].shape) == (30, 16)
    # the guide starts at the decoder's initial output layer
    assert torch.equal(guide.decoder_weight_loc[0].detach(), model.decoder.net[-1].weight.detach())


def test_training_learns_the_weights_posterior_and_it_reaches_the_intervals():
    adata = simulate_screen(400, 40, seed=0)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=0)
    tc = TrainConfig(epochs=30, progress=False, threads=1, seed=0)
    bayes = fit(data, tc, ModelConfig(bayesian_decoder=True, latent_dim=4, hidden_dim=16))
    raw = bayes.guide.decoder_weight_tril[0]
    scale = raw.detach().diagonal(dim1=-2, dim2=-1).exp()
    start = DECODER_SCALE_START * 1.0     # the prior's scale is 1
    assert scale.median() > 1.2 * start   # grew from its start: the data leave it unknown
    assert scale.max() < 0.5              # and stayed far below the prior's scale
    kw = dict(num_draws=60, n_cells=100, seed=0)

    def width():
        post = posterior_ate(bayes.model, bayes.guide, data, ["P0", "P1"], **kw)
        return float((post.upper - post.lower).to_numpy().mean())

    learnt = width()
    with torch.no_grad():   # a wider q(decoder_weight) must give wider ATE intervals
        raw.diagonal(dim1=-2, dim2=-1).add_(4.0)
    assert width() > 1.3 * learnt
