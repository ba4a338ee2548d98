"""Fair scoring: the additive baseline never shares control cells with the truth."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cradle_pyro import PerturbationData, simulate_screen
from cradle_pyro.inference.scoring import (effect_slope, held_out_conditions, interactions, score_ates,
                               single_conditions, summarise_scores)


def null_screen(n_per_condition=60, n_control=40, n_genes=200, seed=0):
    """No condition has any effect: every cell is a control cell in disguise."""
    rng = np.random.default_rng(seed)
    labels = ["control"] * n_control + sum(([c] * n_per_condition for c in ("A", "B", "A+B")), [])
    rates = rng.gamma(2.0, 2.0, n_genes)
    X = rng.poisson(rates, (len(labels), n_genes)).astype(np.float32)
    split = np.where(np.asarray(labels) == "A+B", "test", "train")
    obs = pd.DataFrame({"perturbation": labels, "split": split},
                       index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    return PerturbationData.from_anndata(adata, "perturbation", "control", doublets=False,
                                         split="split", artifact=None, qc_k=100.0)


def test_additive_baseline_is_not_flattered_by_shared_control_noise():
    data = null_screen()
    table = score_ates({}, data, ["A+B"], n_splits=30, seed=0)
    fair = table.set_index("predictor").loc["additive", "pearson_all"]
    # the same baseline scored against a truth that shares all control cells
    from cradle_pyro.inference.effects import perturbseq_normalise
    x = lambda c: perturbseq_normalise(data.counts[np.asarray(data.conditions) == c]).mean(0)
    shared = np.corrcoef(x("A+B") - x("control"), x("A") + x("B") - 2 * x("control"))[0, 1]
    assert shared > 0.4          # control noise alone correlates them
    assert abs(fair) < 0.15      # with disjoint control halves it does not
    ceiling = table.set_index("predictor").loc["ceiling", "pearson_all"]
    assert abs(ceiling) < 0.3    # there is no effect to be reliable about


def test_a_perfect_prediction_scores_near_the_square_root_of_the_ceiling():
    rng = np.random.default_rng(1)
    n_genes, effect = 150, np.zeros(150)
    effect[:30] = rng.normal(0, 1.0, 30)
    rates = rng.gamma(3.0, 3.0, n_genes)
    labels = ["control"] * 200 + ["A"] * 200 + ["B"] * 200 + ["A+B"] * 200
    mult = {"control": 0, "A": 1, "B": 1, "A+B": 2}
    X = np.stack([rng.poisson(rates * np.exp(mult[l] * effect)) for l in labels]).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels,
                        "split": ["test" if l == "A+B" else "train" for l in labels]},
                       index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs,
                       var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    data = PerturbationData.from_anndata(adata, "perturbation", "control", doublets=False,
                                         split="split", qc_k=100.0)
    from cradle_pyro.inference.effects import perturbseq_normalise
    # the "true" ATE from a large independent sample
    big = np.stack([rng.poisson(rates * np.exp(m * effect), (4000, n_genes)) for m in (0, 2)])
    truth = perturbseq_normalise(big[1]).mean(0) - perturbseq_normalise(big[0]).mean(0)
    noise = pd.DataFrame([rng.normal(0, 1, n_genes)], index=["A+B"], columns=data.gene_names)
    perfect = pd.DataFrame([truth], index=["A+B"], columns=data.gene_names)
    summary = summarise_scores(score_ates({"perfect": perfect, "noise": noise}, data, ["A+B"],
                                          n_splits=20))
    ceiling = summary.loc["ceiling", "pearson_all"]
    assert summary.loc["perfect", "pearson_all"] == pytest.approx(np.sqrt(ceiling), abs=0.05)
    assert summary.loc["perfect", "slope_top"] > 0.8
    assert abs(summary.loc["noise", "pearson_all"]) < 0.2
    assert summary.loc["additive", "pearson_all"] > 0.8  # the effects are additive here
    inter = interactions({"perfect": pd.concat([perfect, perfect.rename({"A+B": "A"}) / 2,
                                                perfect.rename({"A+B": "B"}) / 2])},
                         data, ["A+B"])
    assert inter.loc[0, "perfect_norm"] == pytest.approx(0.0, abs=1e-9)
    assert held_out_conditions(data) == ["A+B"]
    assert single_conditions(data) == ["A", "B"]


def test_effect_slope_scores_a_perfect_predictor_one_where_the_observed_slope_does_not():
    """Weak effects (Norman-like): the slope on the observed ATE of the top genes gives the true
    ATE itself about 0.5; effect_slope removes the noise and the winner's curse."""
    screen = simulate_screen(n_cells=2500, n_genes=500, n_singles=12, n_combinations=8,
                             effect_scale=0.4, n_truth_cells=2000, seed=0)
    data = PerturbationData.from_anndata(screen, doublets=False, seed=0)
    truth = pd.DataFrame(np.asarray(screen.uns["truth"]["ate"]),
                         index=list(screen.uns["truth"]["ate_conditions"]), columns=data.gene_names)
    singles = [c for c in truth.index if "+" not in c]
    preds = {"truth": truth, "half": truth * 0.5}
    slope = effect_slope(preds, data, singles, seed=0)["slope"]
    observed = summarise_scores(score_ates(preds, data, singles, split=None, additive=False))
    assert abs(slope["truth"] - 1) < 0.15 and abs(slope["half"] - 0.5) < 0.08
    assert observed.loc["truth", "slope_top"] < 0.7  # the bias effect_slope removes
