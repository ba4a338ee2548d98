"""The large-screen simulator and the data layer's memory discipline (no timings asserted)."""

import anndata as ad
import numpy as np
import scipy.sparse as sp

import cradle_pyro.data as data_module
from cradle_pyro import PerturbationData
from cradle_pyro.simulate_large import simulate_large_screen


def test_large_simulator_writes_a_sparse_screen_in_chunks(tmp_path):
    path = simulate_large_screen(tmp_path / "big.h5ad", n_cells=3000, n_genes=400, n_singles=30,
                                 n_combinations=10, chunk_size=700, n_twins=50, seed=1)
    adata = ad.read_h5ad(path)
    assert adata.shape == (3000, 400) and sp.issparse(adata.X)
    assert 50 < adata.X.nnz / adata.n_obs < 400           # sparse, as a variable-gene panel
    kinds = adata.obs["artifact_kind"].value_counts()
    assert kinds["none"] == 3000 - 240 and kinds["damaged"] == 80
    twins = adata.uns["clean_twins"]
    assert len(twins["cells"]) == 50 and twins["counts"].shape == (50, 400)
    cells = np.asarray(twins["cells"])
    clean_rows = (adata.obs["artifact_kind"].to_numpy()[cells] == "none")
    # a clean cell's twin is the cell itself
    np.testing.assert_array_equal(twins["counts"][clean_rows].toarray(),
                                  adata.X[cells[clean_rows]].toarray())
    again = ad.read_h5ad(simulate_large_screen(tmp_path / "again.h5ad", n_cells=3000, n_genes=400,
                                               n_singles=30, n_combinations=10, chunk_size=700,
                                               n_twins=50, seed=1))
    assert (again.X != adata.X).nnz == 0                  # same seed, same screen
    data = PerturbationData.from_anndata(adata, doublets=False)
    assert data.n_perturbations == 30


def test_data_layer_shares_the_count_matrix_and_standardises_in_chunks(tmp_path, monkeypatch):
    path = simulate_large_screen(tmp_path / "s.h5ad", n_cells=1200, n_genes=150, n_singles=8,
                                 n_combinations=4, chunk_size=500, seed=2)
    adata = ad.read_h5ad(path)
    whole = PerturbationData.from_anndata(adata, doublets=False)
    assert np.shares_memory(whole.counts.data, adata.X.data)   # no copy of the counts
    assert whole.build_seconds and set(whole.build_seconds) >= {"qc", "references"}
    monkeypatch.setattr(data_module, "CHUNK_CELLS", 97)
    chunked = PerturbationData.from_anndata(adata, doublets=False)
    np.testing.assert_allclose(chunked.gene_mean, whole.gene_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.gene_std, whole.gene_std, rtol=1e-5, atol=1e-6)
    # batches read the shared matrix correctly
    batch = whole.batch(np.array([0, 5, 1199]))
    np.testing.assert_array_equal(batch.counts.numpy(), adata.X[[0, 5, 1199]].toarray())
    assert adata.X.data.flags.writeable and whole.counts.data.dtype == np.float32


def test_counts_on_disk_give_the_same_data_and_train(tmp_path):
    import torch

    from cradle_pyro.inference import TrainConfig, fit

    path = simulate_large_screen(tmp_path / "d.h5ad", n_cells=3000, n_genes=120, n_singles=6,
                                 n_combinations=3, chunk_size=1000, seed=4)
    memory = PerturbationData.from_anndata(ad.read_h5ad(path), doublets=False)
    backed = ad.read_h5ad(path, backed="r")
    disk = PerturbationData.from_anndata(backed, doublets=False, counts_on_disk=True)
    assert disk.on_disk and not memory.on_disk
    np.testing.assert_allclose(disk.library, memory.library)
    np.testing.assert_allclose(disk.gene_mean, memory.gene_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(disk.artifact, memory.artifact)
    np.testing.assert_allclose(disk.references.profiles, memory.references.profiles)
    np.testing.assert_allclose(disk.qc_covariates, memory.qc_covariates, rtol=1e-5, atol=1e-5)
    # every training cell once per epoch, rows as in the file
    seen = []
    for batch in disk.batches("train", 256, seed=0):
        rows = batch.cell_index.numpy()
        np.testing.assert_array_equal(batch.counts.numpy(), memory.counts[rows].toarray())
        seen.append(rows)
    seen = np.concatenate(seen)
    assert sorted(seen) == sorted(disk.indices("train")) and not np.array_equal(seen, np.sort(seen))
    run = fit(disk, TrainConfig(epochs=2, batch_size=256, progress=False, seed=0))
    assert np.isfinite(run.history["loss"]).all()
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_train_from_the_command_line_with_counts_on_disk(tmp_path):
    import warnings

    from cradle_pyro.inference.cli import main
    from cradle_pyro.inference.run_io import data_fingerprint, load_run

    path = simulate_large_screen(tmp_path / "c.h5ad", n_cells=1500, n_genes=100, n_singles=4,
                                 n_combinations=2, chunk_size=400, seed=5)
    # the on-disk fingerprint streams the file and equals the in-memory one
    assert data_fingerprint(ad.read_h5ad(path, backed="r")) == data_fingerprint(ad.read_h5ad(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scrublet skipped on disk
        assert main(["train", str(path), "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--counts-on-disk", "--latent-dim", "4", "--hidden-dim", "16",
                     "--num-particles", "2"]) == 0
    run = load_run(tmp_path / "run")  # reloads against the file (fingerprint checked)
    assert run.data.n_cells == 1500
    assert main(["effects", str(tmp_path / "run"), "--perturbations", "P0", "--num-draws", "2",
                 "--n-cells", "20", "--out", str(tmp_path / "ate.csv")]) == 0
