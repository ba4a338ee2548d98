import numpy as np
import pytest
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.config import LIKELIHOODS, MODELS
from inference import TrainConfig, fit


@pytest.fixture(scope="module")
def data(small_screen):
    return PerturbationData.from_anndata(small_screen, doublets=False, seed=0)


FAST = dict(batch_size=128, num_particles=2, progress=False)


SWITCHES = [(kind, "nb") for kind in MODELS] + [("cradle", lik) for lik in LIKELIHOODS if lik != "nb"]


@pytest.mark.parametrize("kind, likelihood", SWITCHES)
def test_every_switch_and_likelihood_trains_without_nan(data, kind, likelihood):
    run = fit(data, TrainConfig(epochs=2, **FAST),
              ModelConfig(model=kind, likelihood=likelihood, latent_dim=4, hidden_dim=32))
    h = run.history
    assert len(h) == 2 and np.isfinite(h[["loss", "elbo", "val_loss"]].to_numpy()).all()
    params = list(run.model.parameters()) + list(run.guide.parameters())
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("guide", ["correlated", "mean-field"])
def test_elbo_improves_on_the_simulator(data, guide):
    run = fit(data, TrainConfig(epochs=8, guide=guide, **FAST), ModelConfig(latent_dim=4, hidden_dim=32))
    h = run.history
    assert h["elbo"].iloc[-1] > h["elbo"].iloc[0] + 5.0
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]


def test_same_seed_same_numbers_on_cpu(data):
    a = fit(data, TrainConfig(epochs=2, seed=4, **FAST), ModelConfig(latent_dim=4, hidden_dim=16))
    b = fit(data, TrainConfig(epochs=2, seed=4, **FAST), ModelConfig(latent_dim=4, hidden_dim=16))
    c = fit(data, TrainConfig(epochs=2, seed=5, **FAST), ModelConfig(latent_dim=4, hidden_dim=16))
    assert np.array_equal(a.history["loss"].to_numpy(), b.history["loss"].to_numpy())
    assert not np.array_equal(a.history["loss"].to_numpy(), c.history["loss"].to_numpy())


def test_checkpoint_resume_continues_the_same_run(data, tmp_path):
    cfg = ModelConfig(latent_dim=4, hidden_dim=16)
    straight = fit(data, TrainConfig(epochs=4, **FAST), cfg)
    fit(data, TrainConfig(epochs=2, **FAST), cfg, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "checkpoint.pt.tmp").exists()
    resumed = fit(data, TrainConfig(epochs=4, **FAST), cfg, checkpoint_dir=tmp_path, resume=True)
    assert len(resumed.history) == 4
    np.testing.assert_allclose(resumed.history["loss"].to_numpy(),
                               straight.history["loss"].to_numpy(), rtol=1e-6)


def test_early_stopping_restores_the_best_state(data):
    run = fit(data, TrainConfig(epochs=30, patience=1, lr=5e-2, **FAST), ModelConfig(latent_dim=4, hidden_dim=16))
    h = run.history
    assert len(h) < 30
    assert run.best_epoch == int(h["val_loss"].idxmin())


def test_cuda_request_without_gpu_is_a_clear_error(data):
    if torch.cuda.is_available():
        run = fit(data, TrainConfig(epochs=1, device="cuda", **FAST), ModelConfig(latent_dim=4, hidden_dim=16))
        assert next(run.model.parameters()).is_cuda
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            fit(data, TrainConfig(epochs=1, device="cuda", **FAST))
