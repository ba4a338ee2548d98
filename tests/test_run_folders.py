"""Run folders own their data: fingerprints, atomic saves, no stale files, divergence never saved."""

import json
import os
import signal
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest
import torch

from cradle_pyro import simulate_screen
from cradle_pyro.errors import CradleInputError, TrainingDiverged
from cradle_pyro.inference import TrainConfig
from cradle_pyro.inference.run_io import load_run, recover_run_folder, save_run, train_from_file
from cradle_pyro.inference.train import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    path = root / "screen.h5ad"
    simulate_screen(n_cells=400, n_genes=50, n_singles=4, n_combinations=2, latent_dim=3,
                    n_truth_cells=20, seed=4).write_h5ad(path)
    run = train_from_file(path, TrainConfig(epochs=1, progress=False, num_particles=1),
                          doublets=False)
    save_run(run, root / "run")
    return root, path, run


def test_a_changed_training_file_is_refused_by_name(trained, tmp_path):
    root, path, run = trained
    adata = ad.read_h5ad(path)
    reversed_genes = adata[:, adata.var_names[::-1]].copy()
    reversed_genes.write_h5ad(path.with_name("reversed.h5ad"))
    with pytest.raises(CradleInputError, match="the gene names or their order"):
        load_run(root / "run", adata=reversed_genes)
    doubled = adata.copy()
    doubled.X = doubled.X * 2
    with pytest.raises(CradleInputError, match="the counts changed"):
        load_run(root / "run", adata=doubled)
    relabelled = adata.copy()
    relabelled.obs["perturbation"] = relabelled.obs["perturbation"].astype(str).to_numpy()[::-1]
    with pytest.raises(CradleInputError, match="perturbation labels changed"):
        load_run(root / "run", adata=relabelled)
    assert load_run(root / "run", adata=adata).data.n_cells == run.data.n_cells


def test_saving_over_a_run_needs_overwrite_and_leaves_no_stale_file(trained):
    root, _, run = trained
    with pytest.raises(CradleInputError, match="holds a trained run"):
        save_run(run, root / "run")
    (root / "run" / "stale_notes.txt").write_text("old")
    save_run(run, root / "run", overwrite=True)
    assert not (root / "run" / "stale_notes.txt").exists()
    assert not list(root.glob(".run.*"))  # no temporary or old sibling left


CHILD = r"""
import sys, torch
from cradle_pyro.inference.run_io import load_run, save_run
run = load_run(sys.argv[1])
target = sys.argv[2]
open(sys.argv[3], "w").write("ready")
k = 0
while True:
    k += 1
    run.best_epoch = k
    with torch.no_grad():
        run.model.log_dispersion.fill_(float(k))
    save_run(run, target, overwrite=True, extra_files={"marker.txt": str(k)})
"""


def test_killing_a_save_at_random_moments_leaves_the_old_or_the_new_run(trained, tmp_path):
    root, _, _ = trained
    target = tmp_path / "run"
    rng = np.random.default_rng(0)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for trial in range(5):
        ready = tmp_path / f"ready{trial}"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root / "run"), str(target),
                                  str(ready)], env=env)
        while not ready.exists():
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        recover_run_folder(target)
        if not (target / "config.json").exists():
            continue  # killed before the first save finished: no run, nothing half-written
        config = json.loads((target / "config.json").read_text())
        marker = int((target / "marker.txt").read_text())
        assert config["best_epoch"] == marker  # config and files of one and the same save
        state = torch.load(target / "model.pt", weights_only=True)
        assert float(state["log_dispersion_unconstrained"][0]) == marker
        assert len((target / "history.csv").read_text().splitlines()) >= 2


def test_divergence_is_caught_restored_and_never_saved(trained):
    _, _, run = trained
    with pytest.raises(TrainingDiverged, match="diverged at epoch 0"):
        fit(run.data, TrainConfig(epochs=2, lr=10.0, on_divergence="stop", progress=False))
    with pytest.warns(RuntimeWarning, match="halved the learning rate"):
        try:
            fit(run.data, TrainConfig(epochs=2, lr=10.0, progress=False))
        except TrainingDiverged:
            pass  # halving four times may not be enough; it must then say so, not save


def test_effects_and_sampling_work_without_the_training_file(trained, tmp_path):
    import shutil

    from cradle_pyro.inference.effects import model_ate, sample_cells

    root, path, run = trained
    moved = tmp_path / "screen.h5ad"
    shutil.copy(path, moved)
    run2 = train_from_file(moved, TrainConfig(epochs=1, progress=False, num_particles=1),
                           doublets=False)
    save_run(run2, tmp_path / "run")
    moved.unlink()  # the training file is gone
    with pytest.warns(UserWarning, match="not available"):
        loaded = load_run(tmp_path / "run")
    ate = model_ate(loaded.model, loaded.guide, loaded.data, ["P0"], num_draws=5, n_cells=20,
                    basal="prior")
    reference = model_ate(run2.model, run2.guide, run2.data, ["P0"], num_draws=5, n_cells=20,
                          basal="prior")
    np.testing.assert_allclose(ate.to_numpy(), reference.to_numpy(), rtol=1e-4, atol=1e-5)
    # over the screen's own cells (the default) the counts are needed: the error names both fixes
    with pytest.raises(CradleInputError, match=r"load_run\(run, adata=\.\.\.\).*basal='prior'"):
        model_ate(loaded.model, loaded.guide, loaded.data, ["P0"], num_draws=5, n_cells=20)
    assert sample_cells(loaded.model, loaded.guide, loaded.data, "P0", n=10).n_obs == 10
    with pytest.raises(CradleInputError, match="needs the training cells' counts"):
        loaded.data.batches("train", 10)


def test_a_run_saved_without_cell_conditions_draws_libraries_from_the_model(trained, tmp_path):
    """Runs saved before library effects have no cell conditions: the libraries of new cells then
    come from the model's own (interventional) library distribution."""
    import shutil

    import pandas as pd

    from cradle_pyro.inference.effects import model_ate, sample_cells
    from cradle_pyro.inference.run_io import CONDITION_COLUMN

    root, path, run = trained
    moved = tmp_path / "screen.h5ad"
    shutil.copy(path, moved)
    run2 = train_from_file(moved, TrainConfig(epochs=1, progress=False, num_particles=1),
                           doublets=False)
    assert run2.model.use_library_effects
    save_run(run2, tmp_path / "run")
    moved.unlink()
    cells = pd.read_csv(tmp_path / "run" / "cells.csv", index_col=0)
    cells.drop(columns=[CONDITION_COLUMN]).to_csv(tmp_path / "run" / "cells.csv")
    with pytest.warns(UserWarning, match="not available"):
        loaded = load_run(tmp_path / "run")
    assert loaded.data.saved_dosage is None
    generated = sample_cells(loaded.model, loaded.guide, loaded.data, "P0", n=12)
    assert np.allclose(generated.obs["library"], np.asarray(generated.X.sum(1)).ravel())
    ate = model_ate(loaded.model, loaded.guide, loaded.data, ["P0"], num_draws=3, n_cells=10,
                    basal="prior")
    assert np.isfinite(ate.to_numpy()).all()


def test_priors_given_as_objects_are_refused_on_save_with_the_fix(trained, tmp_path):
    import dataclasses

    import pyro.distributions as dist

    _, _, run = trained
    custom = dataclasses.replace(run, model_config=dataclasses.replace(
        run.model_config, priors={"effect": dist.Laplace(0.0, 0.5)}))
    with pytest.raises(CradleInputError, match="cannot be saved in a run folder"):
        save_run(custom, tmp_path / "custom")
    assert not (tmp_path / "custom").exists()


def test_a_run_saved_before_the_direct_gene_path_existed_loads_without_it(trained, tmp_path):
    """Older run folders have no ``gene_effects`` in their config: they were trained without it."""
    import shutil

    from cradle_pyro import ModelConfig

    root, path, _ = trained
    run = train_from_file(path, TrainConfig(epochs=1, progress=False, num_particles=1),
                          ModelConfig(gene_effects=False), doublets=False)
    old = save_run(run, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    for key in ("gene_effects", "gene_effect_prior", "gene_effect_scale"):
        config["model"].pop(key)
    (old / "config.json").write_text(json.dumps(config))
    loaded = load_run(old)
    assert loaded.model_config.gene_effects is False and not loaded.model.use_gene_effects
    assert torch.equal(loaded.model.decoder.net[-1].bias, run.model.decoder.net[-1].bias)
    shutil.rmtree(old)
