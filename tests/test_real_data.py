"""The two real screens in ../shared/data load into PerturbationData."""

import anndata as ad
import numpy as np
import pytest

from cradle_pyro import PerturbationData
from tests.conftest import NORMAN, PAPALEXI, shared_file

TRANSCRIPTOME_QC = {"low_total_counts": "total_counts_transcriptome",
                    "low_n_genes": "n_genes_transcriptome"}


@pytest.fixture(scope="module")
def norman():
    return ad.read_h5ad(shared_file(NORMAN))


@pytest.fixture(scope="module")
def papalexi():
    return ad.read_h5ad(shared_file(PAPALEXI))


def test_norman_loads_with_combinations(norman):
    data = PerturbationData.from_anndata(
        norman, "perturbation", "control", qc_columns=TRANSCRIPTOME_QC,
        doublets=False, split="unseen-combinations", seed=0)
    assert data.n_cells == 3375 and data.n_genes == 500
    assert data.n_perturbations == len({t for c in data.condition_names if c != "control"
                                        for t in c.split("+")})
    doubles = [c for c in data.condition_names if "+" in c]
    assert len(doubles) == 15
    assert (data.dosage.sum(1)[np.isin(data.conditions, doubles)] == 2).all()
    held = set(data.conditions[data.split == "test"]) - {"control"}
    assert held and held <= set(doubles)
    assert np.isfinite(data.gene_std).all() and (data.gene_std > 0).all()  # all-zero genes
    share = data.artifact.mean()
    print(f"Norman: artifact share at k=3 (transcriptome totals) = {share:.3f}")
    assert 0.0 < share < 0.2


def test_papalexi_loads_with_unassigned_dropped_or_kept(papalexi):
    cols = dict(TRANSCRIPTOME_QC, high_pct_mt="pct_counts_mt_transcriptome")
    data = PerturbationData.from_anndata(papalexi, "perturbation", "non-targeting",
                                         qc_columns=cols, doublets=True, seed=0)
    n_unassigned = int((papalexi.obs["perturbation"] == "unassigned").sum())
    assert data.n_cells == papalexi.n_obs - n_unassigned
    assert "unassigned" not in data.perturbation_names
    assert data.n_perturbations == 25
    share = data.artifact.mean()
    print(f"Papalexi (unassigned dropped): artifact share at k=3 = {share:.3f}; "
          f"per criterion: {data.qc_table.filter(like='qc_').mean().round(4).to_dict()}")
    assert 0.0 < share < 0.3
    kept = PerturbationData.from_anndata(papalexi, "perturbation", "non-targeting",
                                         qc_columns=cols, doublets=False, drop_labels=())
    assert kept.n_cells == papalexi.n_obs and "unassigned" in kept.perturbation_names
    assert "perturbation" in papalexi.obs and "artifact" not in papalexi.obs


def test_norman_default_path_runs_scrublet_on_its_small_panel(norman):
    """The README's call with doublets on: scrublet keeps 17 variable genes of this
    panel, so its default 30 components do not exist; the components are fitted."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = PerturbationData.from_anndata(norman, "perturbation", "control")
        assert torch.get_num_threads() == 1  # no global state changed in the caller
    finally:
        torch.set_num_threads(threads)
    assert data.qc_thresholds.doublet_column == "predicted_doublet"
    # transcriptome-wide covariates found in obs are preferred over panel sums
    assert data.qc_thresholds.rules["low_total_counts"].column == "total_counts_transcriptome"
    assert data.qc_thresholds.rules["low_n_genes"].column == "n_genes_transcriptome"
    assert 0.0 < data.artifact.mean() < 0.2
