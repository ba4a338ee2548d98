import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cradle_pyro import CradleInputError, PerturbationData


def _tiny(counts=None, labels=None, artifact=None):
    labels = labels or ["ctrl"] * 4 + ["A"] * 4 + ["B"] * 4 + ["A+B"] * 4
    n = len(labels)
    rng = np.random.default_rng(0)
    counts = counts if counts is not None else rng.poisson(3.0, (n, 5)).astype(np.float32) + 1
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)])
    obs["bad"] = artifact if artifact is not None else [0, 1] * (n // 2)
    obs["split"] = "train"
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs,
                      var=pd.DataFrame(index=[f"g{i}" for i in range(counts.shape[1])]))


def _load(adata, **kw):
    kw.setdefault("artifact", "bad")
    kw.setdefault("split", "split")
    return PerturbationData.from_anndata(adata, "perturbation", "ctrl", **kw)


def test_dosage_artifact_library_and_names():
    adata = _tiny()
    data = _load(adata)
    assert data.perturbation_names == ["A", "B"]
    assert data.condition_names[0] == "ctrl"
    dosage = dict(zip(data.conditions, map(tuple, data.dosage)))
    assert dosage == {"ctrl": (0, 0), "A": (1, 0), "B": (0, 1), "A+B": (1, 1)}
    assert np.allclose(data.library, np.asarray(adata.X.sum(1)).ravel())
    assert data.artifact.shape == (16, 1) and data.artifact_names == ["bad"]
    assert sp.issparse(data.counts)
    assert list(data.perturbation_cell_counts()) == [8, 8]
    assert list(data.artifact_cell_counts()) == [8]
    assert data.dosage_of("B+A").tolist() == [1, 1]


def test_reference_profiles_come_from_the_right_cells():
    # condition A: cells 4..7, artifact pattern 0,1,0,1 -> clean cells 4, 6; artifact 5, 7
    counts = np.arange(16 * 3, dtype=np.float32).reshape(16, 3) + 1
    data = _load(_tiny(counts=counts))
    ref = data.references
    prof = lambda cell: ref.profiles[ref.cell_group[cell]]
    # clean cell 4 -> median of artifact cells 5 and 7 of the same condition
    assert np.allclose(prof(4), np.median(counts[[5, 7]], 0))
    # artifact cell 7 -> median of clean cells 4, 6
    assert np.allclose(prof(7), np.median(counts[[4, 6]], 0))
    assert ref.counterfactual_artifact[ref.cell_group[7]].tolist() == [0.0]
    assert ref.counterfactual_artifact[ref.cell_group[4]].tolist() == [1.0]
    # the published choice: only artifact cells have references
    pub = _load(_tiny(counts=counts), reference_artifact_cells_only=True)
    assert pub.references.cell_group[4] == -1 and pub.references.cell_group[5] >= 0


def test_reference_respects_split_and_peer_cap():
    labels = ["ctrl"] * 60 + ["A"] * 4 + ["B"] * 4
    art = [1] * 2 + [0] * 58 + [0, 1] * 4
    adata = _tiny(labels=labels, artifact=art)
    adata.obs["split"] = ["train"] * 30 + ["val"] * 30 + ["train"] * 8
    data = _load(adata, reference_cells=10)
    ref = data.references
    g = ref.groups.iloc[ref.cell_group[0]]
    assert g["split"] == "train" and g["n_peers"] == 10  # 28 clean train controls, capped
    # val controls have no artifact peers in val -> no reference
    assert (ref.cell_group[30:60] == -1).all()


def test_batches_densify_only_the_batch_and_match_counts():
    adata = _tiny()
    data = _load(adata)
    seen = []
    for batch in data.batches("train", batch_size=5, seed=1):
        rows = batch.cell_index.numpy()
        assert np.allclose(batch.counts.numpy(), adata.X[rows].toarray())
        assert batch.num_cells == 16
        assert batch.reference.profiles.shape[0] == len(torch.unique(batch.reference.cell_group[batch.reference.cell_group >= 0]))
        seen.extend(rows)
    assert sorted(seen) == list(range(16))


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda a: a.obs.drop(columns="perturbation", inplace=True), {}, "perturbation column 'perturbation' not in obs"),
        (lambda a: a.obs.__setitem__("perturbation", "A"), {}, "control label 'ctrl'"),
        (lambda a: a.X.data.__setitem__(0, -1.0), {}, "negative values in 1 cells"),
        (lambda a: a.X.data.__setitem__(slice(0, 3), np.nan), {}, "NaN"),
        (lambda a: a.X.data.__setitem__(0, 0.5), {}, "non-integer values in 1 cells"),
        (None, {"layer": "raw"}, "layer 'raw' not found"),
        (lambda a: a.obs.__setitem__("split", ["train"] * 12 + ["test"] * 4), {}, None),
    ],
)
def test_bad_input_raises_clear_errors_and_leaves_adata_alone(mutate, kwargs, message):
    adata = _tiny()
    if mutate is not None:
        mutate(adata)
    before = adata.copy()
    if message is None:  # A+B held out in test: fine, its singles are trained
        _load(adata, **kwargs)
    else:
        with pytest.raises(CradleInputError, match=message):
            _load(adata, **kwargs)
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert (adata.X != before.X).nnz == 0 or np.isnan(adata.X.data).any()


def test_more_bad_input():
    with pytest.raises(CradleInputError, match="empty"):
        _load(_tiny()[:0].copy())
    a = _tiny()
    a.obs_names = ["c0"] * 16
    with pytest.raises(CradleInputError, match="obs names are not unique"):
        _load(a)
    a = _tiny()
    a.var_names = ["g"] * 5
    with pytest.raises(CradleInputError, match="var names are not unique"):
        _load(a)
    # a single seen only in test: target B has no training cell
    a = _tiny()
    a.obs["split"] = ["train"] * 8 + ["test"] * 8
    with pytest.raises(CradleInputError, match=r"\['B'\] have zero cells in training"):
        _load(a)
    a = _tiny()
    a.obs["split"] = "somewhere"
    with pytest.raises(CradleInputError, match="one of"):
        _load(a)


def test_non_integer_counts_can_be_rounded():
    a = _tiny()
    a.X.data[0] = 2.4
    data = _load(a, non_integer_counts="round")
    assert data.counts[0].toarray()[0, a.X[0].indices[0]] in (2.0,)
    assert a.X.data[0] == pytest.approx(2.4)  # the user's matrix is untouched


def _labelled(labels):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(5.0, (len(labels), 30)).astype(np.float32))
    return ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels},
                                            index=[f"c{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(30)]))


def test_labels_one_spelling_per_condition_and_separators_that_mean_what_they_say():
    base = ["control"] * 20 + ["P1"] * 20 + ["P4"] * 20
    data = PerturbationData.from_anndata(_labelled(base + ["P1 + P4"] * 10 + ["P4+P1"] * 10),
                                         doublets=False, qc_k=100.0)
    assert [c for c in data.condition_names if "+" in c] == ["P1+P4"]
    with pytest.raises(CradleInputError, match=r"'P1_P4' joins known targets .* separator is '\+'"):
        PerturbationData.from_anndata(_labelled(base + ["P1_P4"] * 10), doublets=False, qc_k=100.0)
    with pytest.warns(UserWarning, match=r"never seen alone: \['P1\+P9'\]"):
        PerturbationData.from_anndata(_labelled(base + ["P1+P9"] * 10), doublets=False, qc_k=100.0)


def test_backed_anndata_gives_the_same_data_as_in_memory(tmp_path):
    from cradle_pyro import simulate_screen

    path = tmp_path / "screen.h5ad"
    simulate_screen(n_cells=300, n_genes=40, seed=0).write_h5ad(path)
    backed = PerturbationData.from_anndata(ad.read_h5ad(path, backed="r"), doublets=False)
    memory = PerturbationData.from_anndata(ad.read_h5ad(path), doublets=False)
    assert (backed.counts != memory.counts).nnz == 0
    np.testing.assert_array_equal(backed.artifact, memory.artifact)
    np.testing.assert_array_equal(backed.split, memory.split)
