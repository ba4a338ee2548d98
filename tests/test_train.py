import numpy as np
import pytest
import torch

from cradle_pyro import ModelConfig, PerturbationData
from cradle_pyro.config import LIKELIHOODS, MODELS
from cradle_pyro.inference import TrainConfig, fit


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
    # batches smaller than the training split, so that every batch drawn must be seeded
    kw = FAST | dict(batch_size=32)
    a = fit(data, TrainConfig(epochs=2, seed=4, **kw), ModelConfig(latent_dim=4, hidden_dim=16))
    b = fit(data, TrainConfig(epochs=2, seed=4, **kw), ModelConfig(latent_dim=4, hidden_dim=16))
    c = fit(data, TrainConfig(epochs=2, seed=5, **kw), ModelConfig(latent_dim=4, hidden_dim=16))
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
    run = fit(data, TrainConfig(epochs=30, patience=1, lr=5e-2, select="elbo", **FAST),
              ModelConfig(latent_dim=4, hidden_dim=16))
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


def test_data_parallel_training_under_torchrun(small_screen, tmp_path):
    """Two CPU ranks (Gloo) train one run over shards of cells; rank 0 saves it."""
    import json
    import shutil
    import subprocess
    import sys

    path = tmp_path / "screen.h5ad"
    small_screen.write_h5ad(path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run(torchrun + ["-m", "cradle_pyro.inference.distributed", str(path), "--out",
                                     str(tmp_path / "run"), "--epochs", "2", "--no-doublets",
                                     "--latent-dim", "4", "--hidden-dim", "16", "--num-particles", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rank 0 of 2" in out.stdout
    assert "parameters identical on all ranks" in out.stdout  # checked by digest on every rank
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["latent_dim"] == 4
    shutil.rmtree(tmp_path / "run")


def test_shards_partition_the_cells_equally(data):
    a = np.concatenate([b.cell_index.numpy() for b in data.batches("train", 50, seed=1, shard=(0, 2))])
    b = np.concatenate([b.cell_index.numpy() for b in data.batches("train", 50, seed=1, shard=(1, 2))])
    assert len(a) == len(b) and not set(a) & set(b)
    assert len(a) + len(b) >= len(data.indices("train")) - 1


def test_parameter_digest_tells_parameter_sets_apart():
    from cradle_pyro.model import CradleModel
    from cradle_pyro.inference.distributed import parameter_digest

    torch.manual_seed(0)
    a = CradleModel(10, 2, 1)
    torch.manual_seed(0)
    b = CradleModel(10, 2, 1)
    assert parameter_digest(a) == parameter_digest(b)
    with torch.no_grad():
        b.log_dispersion[3] += 1e-6
    assert parameter_digest(a) != parameter_digest(b)
