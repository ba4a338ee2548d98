import numpy as np
import pandas as pd
import pytest

from cradle_pyro.qc import CRITERIA
from cradle_pyro import CradleInputError, QCThresholds, label_artifacts, simulate_screen


def test_qc_recovers_injected_artifacts(standard_screen):
    adata = standard_screen.copy()
    thresholds = label_artifacts(adata, k=3, doublets=True, seed=0)
    truth = adata.obs["is_artifact"].to_numpy()
    found = adata.obs["artifact"].to_numpy()
    precision = (truth & found).sum() / found.sum()
    recall = (truth & found).sum() / truth.sum()
    kind = adata.obs["artifact_kind"].to_numpy()
    recall_damaged_low = found[np.isin(kind, ["damaged", "low_complexity"])].mean()
    print(f"QC k=3: precision={precision:.3f} recall={recall:.3f} "
          f"recall(damaged+low_complexity)={recall_damaged_low:.3f}")
    assert precision > 0.85
    assert recall_damaged_low > 0.95
    assert recall > 0.6
    # scanpy metric names and the per-criterion columns are present
    for col in ("total_counts", "n_genes_by_counts", "pct_counts_mt", "qc_high_pct_mt",
                "qc_low_total_counts", "qc_doublet", "doublet_score"):
        assert col in adata.obs
    assert adata.obs.loc[kind == "damaged", "qc_high_pct_mt"].mean() > 0.8
    assert thresholds.kinds == ["artifact"]


def test_thresholds_judge_new_cells_by_same_rule_and_roundtrip(small_screen):
    adata = small_screen.copy()
    t, table = label_artifacts(adata, doublets=False, inplace=False)
    assert "artifact" not in adata.obs  # inplace=False leaves adata alone
    t2 = QCThresholds.from_dict(t.to_dict())
    again = t2.judge(adata)
    assert (again["artifact"].to_numpy() == table["artifact"].to_numpy()).all()
    # the clean twins pass far more often than the observed artifact cells
    clean = adata.copy()
    clean.X = clean.layers["clean"]
    art = adata.obs["is_artifact"].to_numpy()
    assert t2.judge(clean)["artifact"].to_numpy()[art].mean() < 0.2
    assert table["artifact"].to_numpy()[art].mean() > 0.6


def test_per_criterion_kinds_and_obs_columns(small_screen):
    adata = small_screen.copy()
    adata.obs["total_tx"] = np.asarray(adata.X.sum(1)).ravel() * 10
    t = label_artifacts(adata, doublets=False, artifact_kinds="per-criterion",
                        columns={"low_total_counts": "total_tx"})
    assert t.rules["low_total_counts"].column == "total_tx"
    assert t.rules["low_total_counts"].source == "obs"
    assert t.kinds == [c for c in CRITERIA[:-1] if t.rules[c].active]
    assert "low_total_counts" in t.kinds and "doublet" not in t.kinds
    labels = t.judge(adata)
    assert t.artifact_matrix(labels).shape == (adata.n_obs, len(t.kinds))
    # a cell without the obs column is judged by the panel rule instead
    del adata.obs["total_tx"]
    assert "qc_low_total_counts" in t.judge(adata)


def test_qc_bad_input_errors(small_screen):
    adata = small_screen.copy()
    with pytest.raises(CradleInputError, match="not in obs"):
        label_artifacts(adata, doublets=False, columns={"low_n_genes": "nope"})
    with pytest.raises(CradleInputError, match="unknown QC criteria"):
        label_artifacts(adata, doublets=False, columns={"bad": "perturbation"})
    with pytest.raises(CradleInputError, match="pass doublets=False"):
        label_artifacts(simulate_screen(n_cells=60, n_genes=40, seed=0), doublets=True)
    assert "artifact" not in adata.obs
