"""Cross-validated effects: folds partition the seen cells, test cells stay out, scores are real."""

import numpy as np
import pytest

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.errors import CradleInputError
from cradle_pyro.inference import TrainConfig
from cradle_pyro.inference.cross_validation import cross_validate, fold_split

SPLIT = dict(doublets=False, split="unseen-combinations", heldout_fraction=0.5)


@pytest.fixture(scope="module")
def adata():
    return simulate_screen(n_cells=400, n_genes=30, n_singles=3, n_combinations=2, seed=4)


def test_folds_partition_the_seen_cells_of_each_condition_and_leave_test_alone(adata):
    data = PerturbationData.from_anndata(adata, seed=4, **SPLIT)
    conds = np.asarray(data.conditions)
    folds = [fold_split(data.split, conds, k, 3, seed=4) for k in range(3)]
    is_val = np.stack([f == "val" for f in folds])
    seen = data.split != "test"
    assert (is_val.sum(0)[seen] == 1).all()  # every seen cell validates exactly once
    assert not is_val[:, ~seen].any()
    assert all((f[~seen] == "test").all() for f in folds)
    for c in set(conds[seen]):  # stratified: each condition's seen cells spread over the folds
        sizes = is_val[:, seen & (conds == c)].sum(1)
        assert sizes.max() - sizes.min() <= 1
    again = fold_split(data.split, conds, 0, 3, seed=4)
    assert np.array_equal(again, folds[0]) and not np.array_equal(
        again, fold_split(data.split, conds, 0, 3, seed=5))


def test_cross_validate_scores_each_fold_and_leaves_the_anndata_alone(adata):
    before = list(adata.obs.columns)
    table = cross_validate(adata, TrainConfig(epochs=2, progress=False, seed=4),
                           ModelConfig(latent_dim=4, hidden_dim=16), folds=2, data_kwargs=SPLIT,
                           seed=4, num_draws=2, n_cells=16)
    data = PerturbationData.from_anndata(adata, seed=4, **SPLIT)
    assert list(table["fold"]) == [0, 1]
    assert table["val_cells"].sum() == int((data.split != "test").sum())
    assert np.isfinite(table[["val_ate_mse", "val_ate_r", "val_ate_r_top"]].to_numpy()).all()
    assert (table["val_ate_mse"] > 0).all() and (table["val_conditions"] > 0).all()
    assert list(adata.obs.columns) == before
    with pytest.raises(CradleInputError, match="folds"):
        cross_validate(adata, folds=1, data_kwargs=SPLIT)
    twins = adata.copy()
    twins.obs_names = ["cell"] * twins.n_obs
    with pytest.raises(CradleInputError, match="obs_names_make_unique"):
        cross_validate(twins, folds=2, data_kwargs=SPLIT)
