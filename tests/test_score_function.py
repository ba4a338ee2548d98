"""A guide site without rsample trains on the ELBO's true gradient (score-function terms)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.nn import PyroModule, PyroParam

from cradle_pyro.inference.objective import CradleELBO, score_function_surrogate


def toy_model(counts=None, dosage=None, artifact=None, library=None, **_):
    """z_n ~ Bernoulli(0.3), x_n ~ Normal(2 z_n − 1, 1): a discrete local latent."""
    with pyro.plate("cells", counts.shape[-2], dim=-1):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("counts", dist.Normal((2 * z - 1).unsqueeze(-1), 1.0).to_event(1), obs=counts)


class ToyGuide(PyroModule):
    """q(z_n | x_n) = Bernoulli(sigmoid(w·x_n + b)): no rsample."""

    def __init__(self):
        super().__init__()
        self.w = PyroParam(torch.tensor(0.3))
        self.b = PyroParam(torch.tensor(-0.2))

    def forward(self, counts=None, dosage=None, artifact=None, library=None, **_):
        with pyro.plate("cells", counts.shape[-2], dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=self.w * counts[..., 0] + self.b))


def _grads(loss, guide):
    params = [guide.w_unconstrained, guide.b_unconstrained]
    return torch.stack(torch.autograd.grad(loss, params, retain_graph=True))


def test_discrete_guide_gradient_matches_exact_enumeration():
    pyro.clear_param_store()
    torch.manual_seed(0)
    counts = torch.tensor([[-1.2], [0.4], [1.9], [0.1], [-0.3], [2.5]])
    dosage = torch.zeros(6, 1)
    guide = ToyGuide()
    # exact: the guide's discrete site enumerated, the expectation over z in closed form
    exact = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        toy_model, config_enumerate(guide, "parallel"), counts=counts, dosage=dosage)
    want = _grads(exact, guide)
    objective = CradleELBO(num_particles=20000, beta=0.0)
    got = _grads(objective(toy_model, guide, counts=counts, dosage=dosage), guide)
    assert torch.allclose(got, want, atol=0.03, rtol=0.05), (got, want)
    # the loss's value is still minus the ELBO (the surrogate adds nothing to it)
    assert objective.last_terms["loss"] == pytest.approx(-objective.last_terms["elbo"])
    assert objective.last_terms["elbo"] == pytest.approx(-float(exact.detach()), abs=0.05)


def test_without_the_score_function_the_gradient_would_be_wrong():
    pyro.clear_param_store()
    torch.manual_seed(1)
    counts = torch.tensor([[-1.2], [0.4], [1.9], [0.1], [-0.3], [2.5]])
    guide = ToyGuide()
    exact = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        toy_model, config_enumerate(guide, "parallel"), counts=counts)
    want = _grads(exact, guide)
    with pyro.plate("particles", 20000, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(counts=counts)
        model_trace = poutine.trace(poutine.replay(toy_model, trace=guide_trace)).get_trace(
            counts=counts)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    naive = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum()) / 20000
    assert not torch.allclose(_grads(naive, guide), want, atol=0.1)
    # each particle's log p − log q: the model's z and counts, the guide's z
    log_weight = (model_trace.nodes["z"]["log_prob"] + model_trace.nodes["counts"]["log_prob"]
                  - guide_trace.nodes["z"]["log_prob"]).sum(-1)
    surrogate = score_function_surrogate(model_trace, guide_trace, log_weight)
    assert float(surrogate.detach()) == 0.0
    fixed = naive - surrogate
    assert torch.allclose(_grads(fixed, guide), want, atol=0.03, rtol=0.05)
