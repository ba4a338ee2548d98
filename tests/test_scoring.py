"""Scoring on equal terms: no predictor shares a cell with the truth; baselines from training cells."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cradle_pyro import CradleInputError, PerturbationData, make_split, simulate_screen
from cradle_pyro.inference.baselines import baseline_ates
from cradle_pyro.inference.scoring import (effect_slope, held_out_conditions, interactions, score_ates,
                                           score_ates_shared_controls, single_conditions,
                                           summarise_scores)


def screen_from(labels, X, split):
    obs = pd.DataFrame({"perturbation": labels, "split": split},
                       index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"G{i}" for i in range(X.shape[1])]))
    return PerturbationData.from_anndata(adata, "perturbation", "control", doublets=False,
                                         split="split", qc_k=100.0)


def held_out_split(labels, held=("A+B",), seed=0):
    """The held-out conditions and half the control cells in test, the rest in train."""
    labels = np.asarray(labels)
    split = np.where(np.isin(labels, held), "test", "train").astype(object)
    control = np.flatnonzero(labels == "control")
    split[np.random.default_rng(seed).choice(control, len(control) // 2, replace=False)] = "test"
    return split


def null_screen(n_per_condition=60, n_control=80, n_genes=200, seed=0):
    """No condition has any effect: every cell is a control cell in disguise."""
    rng = np.random.default_rng(seed)
    labels = ["control"] * n_control + sum(([c] * n_per_condition for c in ("A", "B", "A+B")), [])
    X = rng.poisson(rng.gamma(2.0, 2.0, n_genes), (len(labels), n_genes))
    return screen_from(labels, X, held_out_split(labels, seed=seed))


def test_no_predictor_shares_noise_with_the_truth():
    data = null_screen()
    from cradle_pyro.inference.effects import perturbseq_normalise
    conds = np.asarray(data.conditions)
    x = lambda c, s: perturbseq_normalise(data.counts[(conds == c) & (data.split == s)]).mean(0)
    # what a model that learnt the training cells perfectly would predict: their additive effect
    trained = pd.DataFrame([x("A", "train") + x("B", "train") - 2 * x("control", "train")],
                           index=["A+B"], columns=data.gene_names)
    fair = score_ates({"trained": trained}, data, ["A+B"], n_splits=30).set_index("predictor")
    assert set(fair.index) == {"trained", "additive", "mean", "no_change", "linear", "ceiling"}
    for name in ("trained", "additive", "mean", "linear"):
        assert abs(fair.loc[name, "pearson_all"]) < 0.15, name   # nothing to predict, nothing shared
    assert abs(fair.loc["ceiling", "pearson_all"]) < 0.3         # no effect to be reliable about
    assert fair["n_control"].iloc[0] == 40
    np.testing.assert_allclose(fair.loc["trained", "pearson_all"], fair.loc["additive", "pearson_all"],
                               rtol=1e-4)
    # the earlier scorer drew the truth's controls from all control cells, training ones included
    shared = score_ates_shared_controls({"trained": trained}, data, ["A+B"], n_splits=30, seed=0)
    assert shared.set_index("predictor").loc["trained", "pearson_all"] > 0.25


def test_score_ates_refuses_a_split_without_held_out_controls():
    data = null_screen()
    data.split[np.asarray(data.conditions) == "control"] = "train"
    with pytest.raises(CradleInputError, match="heldout_control_fraction"):
        score_ates({}, data, ["A+B"])


def test_unseen_combination_split_holds_out_half_the_controls_unless_told_not_to():
    conds = np.array(["control"] * 40 + ["A"] * 10 + ["B"] * 10 + ["A+B"] * 10)
    split = make_split(conds, "unseen-combinations", heldout_fraction=1.0, seed=0)
    assert (split[conds == "control"] == "test").sum() == 20
    assert set(split[conds == "A"]) <= {"train", "val"}
    old = make_split(conds, "unseen-combinations", heldout_fraction=1.0, seed=0,
                     heldout_control_fraction=0.0)
    assert "test" not in set(old[conds == "control"])
    with pytest.raises(CradleInputError, match="heldout_control_fraction"):
        make_split(conds, "unseen-combinations", heldout_control_fraction=1.0)


def additive_screen(seed=1, n_genes=150):
    rng = np.random.default_rng(seed)
    effect = {t: np.where(rng.random(n_genes) < 0.2, rng.normal(0, 1.0, n_genes), 0) for t in "ABC"}
    rates = rng.gamma(3.0, 3.0, n_genes)
    conds = ["control", "A", "B", "C", "A+C", "A+B"]
    labels = [c for c in conds for _ in range(200 if c == "control" else 150)]
    log_fc = {c: sum(effect[t] for t in c.split("+")) if c != "control" else 0 for c in conds}
    X = np.stack([rng.poisson(rates * np.exp(log_fc[lab])) for lab in labels])
    return screen_from(labels, X, held_out_split(labels, seed=seed)), rates, log_fc


def test_a_perfect_prediction_scores_near_the_square_root_of_the_ceiling():
    data, rates, log_fc = additive_screen()
    rng = np.random.default_rng(2)
    from cradle_pyro.inference.effects import perturbseq_normalise
    # the "true" ATE from a large independent sample
    big = [perturbseq_normalise(rng.poisson(rates * np.exp(log_fc[c]), (4000, len(rates))))
           for c in ("control", "A+B")]
    truth = big[1].mean(0) - big[0].mean(0)
    noise = pd.DataFrame([rng.normal(0, 1, len(rates))], index=["A+B"], columns=data.gene_names)
    perfect = pd.DataFrame([truth], index=["A+B"], columns=data.gene_names)
    summary = summarise_scores(score_ates({"perfect": perfect, "noise": noise}, data, ["A+B"],
                                          n_splits=20))
    ceiling = summary.loc["ceiling", "pearson_all"]
    assert summary.loc["perfect", "pearson_all"] == pytest.approx(np.sqrt(ceiling), abs=0.05)
    assert summary.loc["perfect", "slope_top"] > 0.8
    assert abs(summary.loc["noise", "pearson_all"]) < 0.2
    # the effects are additive here: additive and linear (which has seen A+C) are near perfect,
    # the perturbed mean is a blur of all three targets and no change explains nothing
    for name in ("additive", "linear"):
        assert summary.loc[name, "pearson_all"] > summary.loc["perfect", "pearson_all"] - 0.05, name
    assert summary.loc["mean", "pearson_all"] < summary.loc["additive", "pearson_all"] - 0.1
    assert np.isnan(summary.loc["no_change", "pearson_all"])
    assert summary.loc["no_change", "r2_all"] < 0.05 < summary.loc["additive", "r2_all"]
    inter = interactions({"perfect": pd.concat([perfect, perfect.rename({"A+B": "A"}) / 2,
                                                perfect.rename({"A+B": "B"}) / 2])},
                         data, ["A+B"])
    assert inter.loc[0, "perfect_norm"] == pytest.approx(0.0, abs=1e-9)
    assert held_out_conditions(data) == ["A+B"]
    assert single_conditions(data) == ["A", "B", "C"]


def test_baselines_are_built_from_training_cells_only():
    data, _, _ = additive_screen()
    tables = baseline_ates(data, ["A+B", "A"])
    before = {k: t.copy() for k, t in tables.items()}
    # scrambling every held-out cell changes no baseline
    held = np.flatnonzero(data.split == "test")
    data.counts = data.counts.tolil()
    data.counts[held] = data.counts[held[::-1]].toarray()[:, ::-1]
    data.counts = data.counts.tocsr()
    for k, t in baseline_ates(data, ["A+B", "A"]).items():
        pd.testing.assert_frame_equal(t, before[k], check_exact=False, rtol=1e-6)
    from cradle_pyro.inference.baselines import training_effects
    eff = training_effects(data)
    np.testing.assert_allclose(tables["additive"].loc["A+B"], eff.loc["A"] + eff.loc["B"], rtol=1e-6)
    np.testing.assert_allclose(tables["additive"].loc["A"], eff.loc["A"], rtol=1e-6)
    assert (tables["no_change"].to_numpy() == 0).all()
    assert np.ptp(tables["mean"].to_numpy(), axis=0).max() == 0   # one vector for all


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
    observed = summarise_scores(score_ates_shared_controls(preds, data, singles, split=None,
                                                           additive=False))
    assert abs(slope["truth"] - 1) < 0.15 and abs(slope["half"] - 0.5) < 0.08
    assert observed.loc["truth", "slope_top"] < 0.7  # the bias effect_slope removes
