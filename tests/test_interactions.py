"""Interactions as a posterior query: ATE(A+B) − ATE(A) − ATE(B) under each draw."""

import numpy as np
import pandas as pd
import pytest

from cradle_pyro import PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.cli import main
from cradle_pyro.inference.effects import posterior_ate
from cradle_pyro.inference.interactions import all_pairs, interaction_posterior
from cradle_pyro.inference.screen_queries import batched_ate


@pytest.fixture(scope="module")
def trained(small_screen):
    data = PerturbationData.from_anndata(small_screen, doublets=False)
    return fit(data, TrainConfig(epochs=3, num_particles=1, progress=False)), data


def test_interaction_is_the_joint_minus_the_singles_draw_by_draw(trained):
    run, data = trained
    pair = data.separator.join(data.perturbation_names[:2])
    post = interaction_posterior([run], data, [pair], estimator="sampled", num_draws=20,
                                 n_cells=30, seed=4)
    ate = posterior_ate(run.model, run.guide, data, [pair, *data.perturbation_names[:2]],
                        num_draws=20, n_cells=30, seed=4)
    expected = ate.draws[0] - ate.draws[1] - ate.draws[2]
    np.testing.assert_allclose(post.draws[0], expected, rtol=1e-5, atol=1e-6)
    table = post.summary()
    assert list(table["pair"]) == [pair]
    row = table.iloc[0]
    assert row["ratio_lower"] <= row["ratio"] <= row["ratio_upper"]
    assert 0 <= row["prob_interacting"] <= 1 and row["direction"] in ("synergy", "buffering")
    long = post.to_long()
    assert len(long) == data.n_genes and long["prob_beyond"].between(0, 1).all()


def test_the_batched_engine_gives_the_same_decomposition(trained):
    run, data = trained
    names = data.perturbation_names
    pairs = [f"{names[0]}+{names[1]}", f"{names[1]}+{names[2]}"]
    post = interaction_posterior([run], data, pairs, num_draws=12, n_cells=16, seed=2)
    ate = batched_ate(run.model, run.guide, data, [*pairs, *sorted(names[:3])], num_draws=12,
                      n_cells=16, seed=2)
    row = {p: i for i, p in enumerate(ate.perturbations)}
    for i, (a, b) in enumerate([(names[0], names[1]), (names[1], names[2])]):
        expected = ate.draws[row[pairs[i]]] - ate.draws[row[a]] - ate.draws[row[b]]
        np.testing.assert_allclose(post.draws[i], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(post.additive[i], ate.draws[row[a]] + ate.draws[row[b]],
                                   rtol=1e-5, atol=1e-6)
    assert post.draws.shape == (2, 12, data.n_genes)
    with pytest.raises(ValueError, match="estimator"):
        interaction_posterior([run], data, pairs, estimator="exact")


def test_measured_pairs_carry_their_observed_interaction(trained):
    run, data = trained
    measured = [c for c in data.condition_names if data.separator in c][:1]
    post = interaction_posterior([run], data, measured, num_draws=10, n_cells=20)
    row = post.summary().iloc[0]
    assert np.isfinite(row["observed_magnitude"]) and -1 <= row["observed_r"] <= 1


def test_cli_ranks_pairs_and_refuses_what_is_not_a_pair(small_screen, tmp_path, capsys):
    path = tmp_path / "screen.h5ad"
    small_screen.write_h5ad(path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--no-doublets", "--epochs", "2",
                 "--hidden-dim", "16", "--num-particles", "1", "--quiet"]) == 0
    data = PerturbationData.from_anndata(small_screen, doublets=False)
    names = data.perturbation_names
    assert len(all_pairs(data)) == len(names) * (len(names) - 1) // 2
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(all_pairs(data)[:3]) + "\n")
    out, genes, fig = tmp_path / "pairs.csv", tmp_path / "genes.csv", tmp_path / "pairs.png"
    code = main(["interactions", str(run), "--pairs", str(pairs), "--out", str(out),
                 "--genes-out", str(genes), "--figure", str(fig), "--num-draws", "20",
                 "--n-cells", "20"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert len(table) == 3 and table["prob_interacting"].is_monotonic_decreasing
    assert len(pd.read_csv(genes)) == 3 * data.n_genes and fig.stat().st_size > 1000
    code = main(["interactions", str(run), "--pairs", names[0], "--out",
                 str(tmp_path / "single.csv")])
    assert code == 2 and "is not a pair" in capsys.readouterr().err
    # effects through the query engine: the same table layout, many conditions at once
    ate = tmp_path / "ate.csv"
    code = main(["effects", str(run), "--perturbations", f"{names[0]}+{names[1]},{names[2]}",
                 "--estimator", "batched", "--num-draws", "20", "--out", str(ate)])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(ate)
    assert len(table) == 2 * data.n_genes and (table["lower"] <= table["upper"]).all()
    code = main(["effects", str(run), "--perturbations", names[0], "--estimator", "batched",
                 "--interval-kind", "observed", "--out", str(tmp_path / "obs.csv")])
    assert code == 2 and "--estimator sampled" in capsys.readouterr().err
