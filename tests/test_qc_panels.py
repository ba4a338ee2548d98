"""QC that fits the data it gets: small panels, Ensembl ids, transcriptome-wide columns."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cradle_pyro.qc import label_artifacts, learn_thresholds, predict_doublets
from cradle_pyro import simulate_screen


def test_scrublet_on_a_panel_with_few_variable_genes_is_skipped_with_a_warning():
    rng = np.random.default_rng(0)
    # 300 cells, 60 genes; 55 so highly expressed that scanpy's HVG rule (max_mean=3)
    # drops them: fewer than 10 genes would reach scrublet's PCA
    rates = np.r_[np.full(55, 500.0), np.full(5, 3.0)]
    X = sp.csr_matrix(rng.poisson(rates, (300, 60)).astype(np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(300)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(60)]))
    with pytest.warns(UserWarning, match="doublet detection skipped"):
        out = predict_doublets(adata)
    assert not out["predicted_doublet"].any() and out["doublet_score"].isna().all()


def test_ensembl_ids_use_a_symbols_column_or_say_the_rules_are_inactive():
    adata = simulate_screen(n_cells=300, n_genes=120, seed=0)
    symbols = adata.var_names.to_numpy().copy()
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.warns(UserWarning, match="Ensembl ids"):
        t, _ = learn_thresholds(adata, doublets=False)
    assert not t.rules["high_pct_mt"].active  # no mitochondrial gene found
    adata.var["gene_symbols"] = symbols
    t, metrics = learn_thresholds(adata, doublets=False)
    assert t.rules["high_pct_mt"].active and metrics["pct_counts_mt"].max() > 0


def test_transcriptome_wide_columns_are_preferred_and_can_be_refused():
    adata = simulate_screen(n_cells=300, n_genes=120, seed=0)
    adata.obs["total_counts_transcriptome"] = np.asarray(adata.X.sum(1)).ravel() * 10
    t = label_artifacts(adata.copy(), doublets=False)
    assert t.rules["low_total_counts"].column == "total_counts_transcriptome"
    assert t.rules["low_total_counts"].source == "obs"
    t = label_artifacts(adata.copy(), doublets=False, columns={})
    assert t.rules["low_total_counts"].source == "panel"
