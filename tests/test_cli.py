"""The command line end to end on a small simulated file, through every subcommand."""

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cradle_pyro import simulate_screen
from cradle_pyro.inference.cli import main


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "screen.h5ad"
    simulate_screen(n_cells=600, n_genes=80, n_singles=4, n_combinations=3, latent_dim=4,
                    n_truth_cells=20, seed=2).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def run_dir(screen, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    config = out.parent / "settings.yaml"
    config.write_text("model: cradle\nlatent_dim: 4\nhidden_dim: 32\nnum_particles: 2\n")
    rc = main(["train", str(screen), "--out", str(out), "--perturbation-key", "perturbation",
               "--control", "control", "--split", "unseen-combinations", "--epochs", "3",
               "--config", str(config), "--no-doublets"])
    assert rc == 0
    return out


def test_train_writes_a_complete_run_folder(run_dir):
    for name in ("config.json", "model.pt", "guide.pt", "history.csv", "qc_thresholds.json",
                 "names.json", "cells.csv", "resolved_config.yaml"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4  # from the YAML
    assert config["train"]["epochs"] == 3      # from the command line
    assert len(pd.read_csv(run_dir / "history.csv")) == 3


def test_qc_effects_sample_counterfactual_evaluate_diagnose(screen, run_dir, tmp_path, capsys):
    assert main(["qc", str(screen), "--out", str(tmp_path / "qc.h5ad"), "--no-doublets"]) == 0
    qc = ad.read_h5ad(tmp_path / "qc.h5ad")
    assert "artifact" in qc.obs and "qc_high_pct_mt" in qc.obs
    assert "threshold" in capsys.readouterr().out

    assert main(["effects", str(run_dir), "--perturbations", "P0+P1,P2", "--out",
                 str(tmp_path / "ate.csv"), "--n-cells", "50", "--num-draws", "20"]) == 0
    long = pd.read_csv(tmp_path / "ate.csv")
    assert list(long.columns) == ["perturbation", "gene", "mean", "lower", "upper",
                                  "prob_increase", "prob_decrease", "interval"]
    assert len(long) == 2 * 80 and list(long["perturbation"].unique()) == ["P0+P1", "P2"]
    assert (long["lower"] <= long["mean"]).all() and (long["mean"] <= long["upper"]).all()
    assert np.allclose(long["prob_increase"] + long["prob_decrease"], 1, atol=0.2)
    assert main(["effects", str(run_dir), "--perturbations", "P0+P1,P2", "--out",
                 str(tmp_path / "ate_wide.csv"), "--n-cells", "50", "--num-draws", "20", "--wide"]) == 0
    ate = pd.read_csv(tmp_path / "ate_wide.csv", index_col=0)
    assert ate.shape == (2, 80) and list(ate.index) == ["P0+P1", "P2"]
    assert np.allclose(ate.loc["P2"].to_numpy(), long[long.perturbation == "P2"]["mean"].to_numpy(),
                       atol=1e-5)
    # the default averages over the screen's own (abducted) cells; --basal prior over new ones
    assert main(["effects", str(run_dir), "--perturbations", "P0+P1,P2", "--out",
                 str(tmp_path / "ate_prior.csv"), "--n-cells", "50", "--num-draws", "20", "--wide",
                 "--basal", "prior"]) == 0
    prior = pd.read_csv(tmp_path / "ate_prior.csv", index_col=0)
    assert prior.shape == ate.shape and not np.allclose(prior.to_numpy(), ate.to_numpy())

    assert main(["sample", str(run_dir), "--perturbation", "P0+P1", "--n", "30", "--out",
                 str(tmp_path / "cells.h5ad")]) == 0
    cells = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert cells.shape == (30, 80) and (cells.obs["intervention_artifact"] == "clean").all()

    # cell-eval's layout: target_gene, non-targeting, log1p X; the truth only from held-out cells
    assert main(["predict", str(run_dir), "--n", "20", "--out", str(tmp_path / "pred.h5ad"),
                 "--observed", str(tmp_path / "real.h5ad")]) == 0
    pred, real = ad.read_h5ad(tmp_path / "pred.h5ad"), ad.read_h5ad(tmp_path / "real.h5ad")
    held = sorted(set(real.obs["target_gene"]) - {"non-targeting"})
    assert held and all("+" in c for c in held)
    assert sorted(set(pred.obs["target_gene"])) == held + ["non-targeting"]
    assert pred.n_obs == 20 * (len(held) + 1) and list(pred.var_names) == list(real.var_names)
    # log1p-normalised: each cell's expm1 sums to 10^4
    np.testing.assert_allclose(np.expm1(np.asarray(real.X)).sum(1), 1e4, rtol=1e-3)
    np.testing.assert_allclose(np.expm1(np.asarray(pred.X)).sum(1), 1e4, rtol=1e-3)
    assert main(["predict", str(run_dir), "--baseline", "additive", "--n", "20",
                 "--out", str(tmp_path / "additive.h5ad")]) == 0
    assert ad.read_h5ad(tmp_path / "additive.h5ad").n_obs == 20 * (len(held) + 1)

    assert main(["counterfactual", str(run_dir), str(screen), "--do", "artifact=clean",
                 "--do", "dosage=P1", "--out", str(tmp_path / "cf.h5ad"), "--num-samples", "1"]) == 0
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    assert cf.shape == (600, 80) and {"expected", "factual", "factual_expected"} <= set(cf.layers)

    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "report"), "--n-cells", "50",
                 "--num-draws", "20"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {"cradle", "additive", "mean", "no_change", "linear", "ceiling"} <= set(metrics["summary"])
    assert metrics["n_control_heldout"] > 0
    assert np.isfinite(metrics["summary"]["cradle"]["pearson_all"])
    assert 0 < metrics["summary"]["ceiling"]["pearson_top"] <= 1
    assert metrics["basal"] == "abducted"
    assert "abducted basal states" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "figures" / "ate_scatter.png").stat().st_size > 1000
    assert (tmp_path / "report" / "figures" / "umap_cradle.png").stat().st_size > 1000

    assert main(["embed", str(run_dir), "--out", str(tmp_path / "embed.h5ad"), "--umap",
                 str(tmp_path / "umap.png")]) == 0
    emb = ad.read_h5ad(tmp_path / "embed.h5ad")
    assert emb.obsm["X_cradle_basal"].shape == (emb.n_obs, 4)
    assert (tmp_path / "umap.png").stat().st_size > 1000

    assert main(["diagnose", str(run_dir), "--out", str(tmp_path / "post.nc"), "--n-cells", "20",
                 "--draws", "10"]) == 0
    assert (tmp_path / "post.nc").exists() and (tmp_path / "post_summary.csv").exists()


def test_bad_input_is_one_line_and_nonzero(screen, run_dir, tmp_path):
    cmd = [sys.executable, "-m", "cradle_pyro.inference.cli"]
    bad = subprocess.run(cmd + ["train", str(screen), "--out", str(tmp_path / "r"),
                                "--perturbation-key", "guide"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "perturbation column 'guide' not in obs" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run(cmd + ["effects", str(tmp_path / "nope"), "--perturbations", "P0",
                                    "--out", "x.csv"], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a run folder" in missing.stderr
    unknown = subprocess.run(cmd + ["effects", str(run_dir), "--perturbations", "ZZZ",
                                    "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert unknown.returncode == 2 and "ZZZ" in unknown.stderr


def test_cross_validate_writes_one_row_per_fold(screen, tmp_path, capsys):
    out = tmp_path / "cv.csv"
    assert main(["cross-validate", str(screen), "--out", str(out), "--split", "unseen-combinations",
                 "--folds", "2", "--epochs", "1", "--latent-dim", "4", "--hidden-dim", "16",
                 "--no-doublets"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["fold", "val_ate_mse", "val_ate_r", "val_ate_r_top",
                                   "val_conditions", "val_cells"]
    assert list(table["fold"]) == [0, 1] and np.isfinite(table["val_ate_mse"]).all()
    assert "2 folds: val_ate_mse" in capsys.readouterr().out
    assert main(["cross-validate", str(screen), "--out", str(out), "--members", "2"]) == 2
    with pytest.raises(SystemExit):  # argparse: one fold cannot validate
        main(["cross-validate", str(screen), "--out", str(out), "--folds", "1"])


def test_help_teaches_with_examples():
    out = subprocess.run([sys.executable, "-m", "cradle_pyro.inference.cli", "train", "--help"],
                         capture_output=True, text=True).stdout
    assert "examples:" in out and "--split" in out and "YAML" in out


def test_every_config_field_is_settable_from_the_command_line_or_yaml(tmp_path):
    import dataclasses

    from cradle_pyro import ModelConfig
    from cradle_pyro.inference import TrainConfig
    from cradle_pyro.inference.cli import TRAIN_OPTIONS, YAML_ONLY, configs_from_options, resolve_train_options

    # epochs_auto records that the epochs were chosen from the data: a result, not a setting
    settable = set(TRAIN_OPTIONS) | set(YAML_ONLY) | {"progress", "epochs_auto"}
    for cls in (ModelConfig, TrainConfig):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in settable]
        assert not missing, f"{cls.__name__} fields not settable: {missing}"
    config = tmp_path / "all.yaml"
    config.write_text("mask_beta: [2, 8]\npriors: {effect: laplace}\non_divergence: stop\n"
                      "target_effects: false\nmask_prob: 0.3\nselect: ate\nwarmup: 2\n")
    import argparse

    from cradle_pyro.inference.cli import build_parser

    args = build_parser().parse_args(["train", "x.h5ad", "--out", "r", "--config", str(config),
                                      "--no-target-effects", "--max-lr-halvings", "2"])
    mc, tc = configs_from_options(resolve_train_options(args))
    assert mc.mask_beta == [2, 8] and mc.priors == {"effect": "laplace"} and mc.mask_prob == 0.3
    assert mc.target_effects is False and tc.on_divergence == "stop" and tc.max_lr_halvings == 2
    assert tc.select == "ate" and tc.warmup == 2


def test_latent_artifact_state_from_the_command_line(screen, run_dir, tmp_path, capsys):
    out = tmp_path / "latent"
    assert main(["train", str(screen), "--out", str(out), "--epochs", "3", "--latent-dim", "4",
                 "--hidden-dim", "32", "--num-particles", "2", "--no-doublets",
                 "--artifact-state", "latent"]) == 0
    capsys.readouterr()
    assert main(["artifacts", str(out), "--out", str(tmp_path / "post.csv"),
                 "--figure", str(tmp_path / "post.png"), "--twins", str(screen)]) == 0
    printed = capsys.readouterr().out
    assert "abducted as artifacts" in printed and "the counts cleared" in printed
    # the twins' table: a row per group, distance after / before cleaning
    assert "clean_unflagged" in printed and "ratio" in printed
    post = pd.read_csv(tmp_path / "post.csv", index_col=0)
    both = {"qc_p_any", "counts_qc_p_any", "counts_qc_p_damaged"}
    assert {"p_damaged", "p_low_complexity", "p_doublet", "p_any"} | both <= set(post.columns)
    assert post["p_any"].between(0, 1).all() and len(post) == 600
    np.testing.assert_array_equal(post["p_any"], post["qc_p_any"])  # the default: QC evidence
    assert (tmp_path / "post.png").stat().st_size > 0
    assert main(["artifacts", str(out), "--out", str(tmp_path / "post_counts.csv"),
                 "--abduct-from", "counts+qc"]) == 0
    with_counts = pd.read_csv(tmp_path / "post_counts.csv", index_col=0)
    np.testing.assert_allclose(with_counts["p_any"], post["counts_qc_p_any"], rtol=1e-5, atol=1e-6)
    assert main(["counterfactual", str(out), str(screen), "--do", "artifact=clean", "--out",
                 str(tmp_path / "cf.h5ad"), "--abduct-from", "counts+qc"]) == 0
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    assert "artifact_p_damaged" in cf.obs and cf.uns["abduct_from"] == "counts+qc"
    assert main(["evaluate", str(out), "--out", str(tmp_path / "report"), "--n-cells", "30",
                 "--num-draws", "3", "--twins", str(screen)]) == 0
    assert (tmp_path / "report" / "figures" / "artifacts_cradle.png").stat().st_size > 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "abducted as artifacts" in report and "| clean_unflagged |" in report
    # a --twins file without twins is refused in one line, before any long work
    bare = ad.read_h5ad(screen)
    bare.layers.clear()
    bare.write_h5ad(tmp_path / "bare.h5ad")
    capsys.readouterr()
    for cmd in (["evaluate", str(out), "--out", str(tmp_path / "r2")],
                ["artifacts", str(out), "--out", str(tmp_path / "p2.csv")]):
        assert main(cmd + ["--twins", str(tmp_path / "bare.h5ad")]) == 2
        err = capsys.readouterr().err
        assert "no layers['clean_expected']" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists() and not (tmp_path / "p2.csv").exists()
    capsys.readouterr()
    # a run that observes its artifact state has no posterior to report: one line, exit 2
    assert main(["artifacts", str(run_dir), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "artifact_state='latent'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_members_train_an_ensemble_whose_posteriors_effects_and_evaluate_mix(screen, run_dir,
                                                                             tmp_path):
    from cradle_pyro.inference.ensembles import ensemble_ate
    from cradle_pyro.inference.run_io import load_members

    out = tmp_path / "ensemble"
    args = ["train", str(screen), "--out", str(out), "--split", "unseen-combinations",
            "--epochs", "3", "--latent-dim", "4", "--hidden-dim", "32", "--num-particles", "2",
            "--no-doublets"]
    assert main(args + ["--members", "0"]) == 2  # refused, one line
    assert main(args + ["--members", "2"]) == 0
    member = json.loads((out / "members" / "1" / "config.json").read_text())
    assert member["train"]["seed"] == 1 and member["model"]["latent_dim"] == 4
    runs = load_members(out)
    assert len(runs) == 2 and runs[1].data is runs[0].data
    assert len(load_members(run_dir)) == 1  # a plain run is an ensemble of one

    assert main(["effects", str(out), "--perturbations", "P0+P1,P2", "--out",
                 str(tmp_path / "ate.csv"), "--n-cells", "30", "--num-draws", "20", "--wide"]) == 0
    ate = pd.read_csv(tmp_path / "ate.csv", index_col=0)
    mixed = ensemble_ate(runs, runs[0].data, ["P0+P1", "P2"], num_draws=20, n_cells=30).mean
    np.testing.assert_allclose(ate.to_numpy(), mixed.to_numpy(), atol=1e-5)
    first = ensemble_ate(runs[:1], runs[0].data, ["P0+P1", "P2"], num_draws=20, n_cells=30).mean
    assert not np.allclose(ate.to_numpy(), first.to_numpy(), atol=1e-3)

    assert main(["evaluate", str(out), "--out", str(tmp_path / "report"), "--n-cells", "30",
                 "--num-draws", "20"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["models"]["cradle"]["members"] == 2
    assert "an ensemble of 2 runs" in (tmp_path / "report" / "report.md").read_text()


def test_bootstrap_members_are_the_bagged_posterior_of_the_python_api(screen, tmp_path):
    from dataclasses import replace

    from cradle_pyro.inference import fit
    from cradle_pyro.inference.run_io import load_members

    out = tmp_path / "bagged"
    assert main(["train", str(screen), "--out", str(out), "--split", "unseen-combinations",
                 "--epochs", "2", "--latent-dim", "4", "--hidden-dim", "32",
                 "--num-particles", "2", "--no-doublets", "--members", "2",
                 "--bootstrap"]) == 0
    runs = load_members(out)
    assert [r.train_config.bootstrap for r in runs] == [True, True]
    assert runs[0].data.n_cells == runs[1].data.n_cells  # queries see the whole screen
    # member k is the plain fit of the replicate seeded k, from the same configs
    for k, run in enumerate(runs):
        alone = fit(run.data.resample_training(k), replace(run.train_config, bootstrap=False),
                    run.model_config)
        np.testing.assert_allclose(run.history["loss"], alone.history["loss"], rtol=1e-5)
