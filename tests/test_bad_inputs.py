"""Every entry point refuses bad input with one line, exit status 2, and writes nothing.

Table-driven: each case is a command line (with placeholders for the fixture
paths), the text the message must contain, and the output path that must not
appear. Run in-process, so argparse refusals are caught as ``SystemExit(2)``.
"""

import errno
import hashlib
import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cradle_pyro import simulate_screen
from cradle_pyro.inference.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad"))


def make_files(root: Path) -> dict:
    """The fixture's files in ``root`` (also used by benchmarks/bad_inputs_table.py)."""
    screen = root / "screen.h5ad"
    adata = simulate_screen(n_cells=500, n_genes=60, n_singles=4, n_combinations=2,
                            latent_dim=4, n_truth_cells=20, seed=5)
    adata.write_h5ad(screen)
    run = root / "run"
    assert main(["train", str(screen), "--out", str(run), "--epochs", "2", "--no-doublets",
                 "--latent-dim", "3", "--hidden-dim", "16", "--num-particles", "1"]) == 0
    (root / "notes.txt").write_text("not an AnnData file\n")
    variants = {"negative": lambda a: a.X.data.__setitem__(0, -3.0),
                "lognorm": lambda a: setattr(a, "X", a.X.log1p()),
                "infinite": lambda a: a.X.data.__setitem__(0, np.inf),
                "missing": lambda a: a.X.data.__setitem__(0, np.nan)}
    for name, spoil in variants.items():
        bad = adata.copy()
        bad.X = bad.X.astype(np.float32).tocsr()
        spoil(bad)
        bad.write_h5ad(root / f"{name}.h5ad")
    dup = adata.copy()
    dup.obs_names = ["same"] * 2 + list(dup.obs_names[2:])
    dup.write_h5ad(root / "dupcells.h5ad")
    raw = screen.read_bytes()
    (root / "cut.h5ad").write_bytes(raw[: len(raw) // 3])
    yamls = {
        "malformed.yaml": "epochs: [1, 2\nmodel: sams\n",
        "list.yaml": "- epochs\n- 3\n",
        "string_bool.yaml": 'no_doublets: "false"\n',
        "string_int.yaml": "epochs: ten\n",
        "unknown.yaml": "epoch: 3\n",
        "qc_list.yaml": "qc_columns: [total_counts_transcriptome]\n",
        "neg_lr.yaml": "lr: -0.1\n",
        "float_epochs.yaml": "epochs: 2.5\n",
    }
    for name, text in yamls.items():
        (root / name).write_text(text)
    evil = root / "evil_run"
    shutil.copytree(run, evil)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    (evil / "model.pt").write_bytes(pickle.dumps({"x": Boom()}))
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("mine")
    controls = adata[adata.obs["perturbation"] == "control"].copy()
    controls.write_h5ad(root / "controls_only.h5ad")
    for name, edit in DAMAGE.items():
        shutil.copytree(run, root / name)
        edit(root / name)
    (root / "ate_existing.csv").write_text("perturbation,gene,mean\nmine,mine,1\n")
    (root / "report_existing").mkdir()
    (root / "report_existing" / "notes.md").write_text("mine")
    return {"screen": str(screen), "run": str(run), "root": str(root), "evil": str(evil),
            "foreign": str(foreign)}


def _cut(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _edit_hidden_dim(run):
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden_dim"] = 33
    (run / "config.json").write_text(json.dumps(config))


def _link_config_to_binary(run):
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(run / "model.pt")


DAMAGE = {  # run folders spoilt in the ways a user's disk or editor spoils them
    "cut_config": lambda run: _cut(run / "config.json"),
    "cut_names": lambda run: _cut(run / "names.json"),
    "cut_cells": lambda run: (run / "cells.csv").write_text(""),
    "edited_hidden": _edit_hidden_dim,
    "linked_config": _link_config_to_binary,
    "no_model": lambda run: (run / "model.pt").unlink(),
}


T = "train {screen} --no-doublets --epochs 1 --out {root}/new_run"
E = "effects {run} --perturbations P0 --out {root}/ate.csv"
S = "sample {run} --perturbation P0 --out {root}/cells.h5ad"
C = "counterfactual {run} {screen} --do artifact=clean --out {root}/cf.h5ad"
Q = "qc {screen} --no-doublets --out {root}/qc.h5ad"

CASES = [
    # train: numbers and choices
    (T + " --batch-size 0", "--batch-size 0 must be at least 1"),
    (T + " --num-particles 0", "--num-particles 0 must be at least 1"),
    (T + " --lr -1", "--lr -1.0 must be greater than 0"),
    (T + " --lr 0", "--lr 0.0 must be greater than 0"),
    (T + " --lr nan", "--lr nan must be finite"),
    (T + " --latent-dim 0", "--latent-dim 0 must be at least 1"),
    (T + " --hidden-dim 0", "--hidden-dim 0 must be at least 1"),
    (T + " --n-layers 0", "--n-layers 0 must be at least 1"),
    (T + " --epochs 0", "--epochs 0 must be at least 1"),
    (T + " --epochs -3", "--epochs -3 must be at least 1"),
    (T + " --patience 0", "--patience 0 must be at least 1"),
    (T + " --beta -1", "--beta -1.0 must be at least 0"),
    (T + " --independence -2", "--independence -2.0 must be at least 0"),
    (T + " --mask-prob 1.5", "--mask-prob 1.5 must be less than 1"),
    (T + " --mask-prob 0", "--mask-prob 0.0 must be greater than 0"),
    (T + " --effect-scale 0", "--effect-scale 0.0 must be greater than 0"),
    (T + " --class-balance 1.5", "--class-balance 1.5 must be less than 1"),
    (T + " --weight-decay -1", "--weight-decay -1.0 must be at least 0"),
    (T + " --clip-norm 0", "--clip-norm 0.0 must be greater than 0"),
    (T + " --warmup 5", "--warmup 5 must be less than epochs=1"),
    (T + " --select best", "--select 'best'"),
    (T + " --model foo", "model='foo'"),
    (T + " --likelihood foo", "likelihood='foo'"),
    (T + " --guide foo", "--guide 'foo'"),
    (T + " --alignment-weighting foo", "--alignment-weighting 'foo'"),
    (T + " --seed -1", "--seed -1 must be at least 0"),
    (T + " --batch-size abc", "invalid int value"),
    # train: data
    (T + " --perturbation-key guide", "perturbation column 'guide' not in obs"),
    (T + " --control ctrl", "ctrl"),
    (T + " --layer counts", "layer 'counts' not found"),
    (T + " --split nope", "nope"),
    (T + " --qc-column low_total_counts", "must look like KEY=VALUE"),
    (T + " --qc-column low_total_counts=nope", "QC column 'nope'"),
    (T + " --qc-column tall=total", "unknown QC criteria"),
    # train: YAML
    (T + " --config {root}/missing.yaml", "config file"),
    (T + " --config {root}/malformed.yaml", "is not valid YAML"),
    (T + " --config {root}/list.yaml", "must hold `key: value` pairs"),
    (T + " --config {root}/string_bool.yaml", "no_doublets='false' (a str) must be true or false"),
    (T + " --config {root}/string_int.yaml", "epochs='ten' (a str) must be a whole number"),
    (T + " --config {root}/unknown.yaml", "unknown keys"),
    (T + " --config {root}/qc_list.yaml", "qc_columns must map"),
    (T + " --config {root}/neg_lr.yaml", "lr=-0.1 must be greater than 0"),
    (T + " --config {root}/float_epochs.yaml", "epochs=2.5"),
    # train: files and folders
    ("train {root}/nope.h5ad --out {root}/new_run", "not found"),
    ("train {root}/notes.txt --out {root}/new_run", "cannot read"),
    ("train {root}/cut.h5ad --out {root}/new_run", "cannot read"),
    ("train {root} --out {root}/new_run", "is a folder"),
    ("train {screen} --no-doublets --out {root}/notes.txt", "is a file"),
    ("train {screen} --no-doublets --out {root}/no/such/run", "does not exist"),
    ("train {screen} --no-doublets --epochs 1 --out {run}", "holds a trained run"),
    ("train {screen} --no-doublets --epochs 1 --out {foreign}", "holds other files"),
    (T + " --resume", "no checkpoint"),
    # effects
    (E + " --n-cells 0", "must be at least 1"),
    (E + " --n-cells -5", "must be at least 1"),
    (E + " --num-draws 0", "must be at least 1"),
    (E + " --interval 1.5", "must be less than 1"),
    (E + " --interval 0", "must be greater than 0"),
    (E + " --seed -1", "must be at least 0"),
    ("effects {run} --perturbations , --out {root}/ate.csv", "names no condition"),
    ("effects {run} --perturbations ZZZ --out {root}/ate.csv", "ZZZ"),
    ("effects {root}/nope --perturbations P0 --out {root}/ate.csv", "not a run folder"),
    ("effects {run} --perturbations P0 --out {root}/no/ate.csv", "does not exist"),
    ("effects {run} --perturbations P0 --out {root}", "is a folder"),
    ("effects {evil} --perturbations P0 --out {root}/ate.csv", "refused to load"),
    # sample
    (S + " --n 0", "must be at least 1"),
    ("sample {run} --perturbation ZZZ --out {root}/cells.h5ad", "ZZZ"),
    ("sample {run} --perturbation P0 --artifact bogus --out {root}/cells.h5ad", "bogus"),
    # counterfactual
    (C + " --num-samples 0", "must be at least 1"),
    ("counterfactual {run} {screen} --do bogus --out {root}/cf.h5ad", "KEY=VALUE"),
    ("counterfactual {run} {screen} --do artifact=bogus --out {root}/cf.h5ad", "bogus"),
    ("counterfactual {run} {root}/nope.h5ad --do artifact=clean --out {root}/cf.h5ad", "not found"),
    # qc
    (Q + " --k 0", "must be greater than 0"),
    (Q + " --k -1", "must be greater than 0"),
    (Q + " --column nope", "KEY=VALUE"),
    (Q + " --column tall=total_counts", "unknown QC criteria"),
    (Q + " --column low_total_counts=nope", "QC column 'nope'"),
    (Q + " --layer counts", "layer 'counts' not found"),
    ("qc {screen} --out {root}/no/qc.h5ad", "does not exist"),
    ("qc {root}/notes.txt --out {root}/qc.h5ad", "cannot read"),
    ("qc {root}/negative.h5ad --no-doublets --out {root}/qc.h5ad", "negative values in 1 cells"),
    ("qc {root}/lognorm.h5ad --no-doublets --out {root}/qc.h5ad", "non-integer values"),
    ("qc {root}/infinite.h5ad --no-doublets --out {root}/qc.h5ad", "infinite values in 1 cells"),
    ("qc {root}/missing.h5ad --no-doublets --out {root}/qc.h5ad", "NaN in 1 cells"),
    ("qc {root}/dupcells.h5ad --no-doublets --out {root}/qc.h5ad", "obs names are not unique"),
    ("counterfactual {run} {root}/lognorm.h5ad --do artifact=clean --out {root}/cf.h5ad",
     "non-integer values"),
    ("train {root}/negative.h5ad --no-doublets --out {root}/new_run", "negative values"),
    ("train {root}/dupcells.h5ad --no-doublets --out {root}/new_run", "obs names are not unique"),
    # evaluate, diagnose, demo
    ("evaluate {run} --num-draws 0 --out {root}/report", "must be at least 1"),
    ("diagnose {run} --draws 0 --out {root}/post.nc", "must be at least 1"),
    ("diagnose {run} --n-cells 0 --out {root}/post.nc", "must be at least 1"),
    ("demo --cells 0 --out {root}/demo", "must be at least 1"),
    ("demo --genes -1 --out {root}/demo", "must be at least 1"),
    ("demo --epochs 0 --out {root}/demo", "must be at least 1"),
    # outputs that exist, or that are an input: refused, and the file is left as it was
    ("qc {screen} --no-doublets --out {screen}", "is the input"),
    ("qc {screen} --no-doublets --out {screen} --overwrite", "is the input"),
    ("counterfactual {run} {screen} --do artifact=clean --out {screen} --overwrite", "is the input"),
    ("sample {run} --perturbation P0 --n 5 --out {screen} --overwrite", "is the input"),
    ("effects {run} --perturbations P0 --out {screen} --overwrite", "is the input"),
    ("effects {run} --perturbations P0 --out {run}/config.json --overwrite", "is the input"),
    ("effects {run} --perturbations P0 --out {root}/ate_existing.csv", "exists; pass --overwrite"),
    ("embed {run} --out {root}/ate_existing.csv", "exists; pass --overwrite"),
    ("artifacts {run} --out {root}/a.csv --figure {screen}", "is the input"),
    ("diagnose {run} --out {screen} --overwrite", "is the input"),
    ("evaluate {run} --out {root}/report_existing", "exists; pass --overwrite"),
    ("evaluate {run} --out {run} --overwrite", "is the input"),
    ("demo --out {foreign}", "exists; pass --overwrite"),
    ("train {screen} --no-doublets --epochs 1 --out {foreign} --overwrite", "holds other files"),
    ("train {screen} --no-doublets --epochs 1 --out {root} --overwrite", "holds other files"),
    # labels
    ("effects {run} --perturbations P0+P0 --out {root}/ate.csv", "names target 'P0' twice"),
    (E + " --interval-kind observed --observed-cells 5", "must be two positive whole numbers"),
    (E + " --interval-kind observed --observed-cells 5,0", "must be two positive whole numbers"),
    (E + " --interval-kind credible", "invalid choice"),
    ("effects {run} --perturbations P0+ --out {root}/ate.csv", "has an empty part"),
    ("effects {run} --perturbations P0,P0 --out {root}/ate.csv", "names 'P0' twice"),
    ("effects {run} --perturbations-file {root}/nope.txt --out {root}/ate.csv", "cannot read"),
    ("effects {run} --perturbations P0 --perturbations-file {root}/notes.txt --out {root}/ate.csv",
     "not allowed with argument"),
    ("sample {run} --perturbation P0+P0 --out {root}/cells.h5ad", "names target 'P0' twice"),
    ("train {root}/controls_only.h5ad --no-doublets --out {root}/new_run", "every cell in"),
    # damaged or hand-edited run folders
    ("effects {root}/cut_config --perturbations P0 --out {root}/ate.csv", "is not valid JSON"),
    ("effects {root}/cut_names --perturbations P0 --out {root}/ate.csv", "is not valid JSON"),
    ("effects {root}/cut_cells --perturbations P0 --out {root}/ate.csv", "cannot be read as a table"),
    ("effects {root}/edited_hidden --perturbations P0 --out {root}/ate.csv", "size mismatch"),
    ("effects {root}/linked_config --perturbations P0 --out {root}/ate.csv", "is not valid JSON"),
    ("effects {root}/no_model --perturbations P0 --out {root}/ate.csv", "is missing"),
    ("sample {root}/edited_hidden --perturbation P0 --out {root}/cells.h5ad", "size mismatch"),
    # the words of the command line, not of the Python API
    ("train {screen} --no-doublets --epochs 1 --out {root}/new_run --control ctrl", "pass --control"),
    ("qc {root}/lognorm.h5ad --no-doublets --out {root}/qc.h5ad", "--round-counts"),
]


def _outputs(argv):
    if "--out" in argv:
        return [argv[argv.index("--out") + 1]]
    return []


def checksums(root) -> dict:
    """md5 of every file under ``root`` (links by their own target name): proof nothing changed."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_symlink():
            out[str(path)] = "->" + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def run_cli(argv, capsys):
    """(exit status, stderr) of one in-process CLI call, argparse refusals included."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("line,message", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_refused_in_one_line(files, line, message, capsys):
    argv = line.format(**files).split()
    outputs = [o for o in _outputs(argv) if not os.path.exists(o)]
    before = checksums(files["root"])
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert message in err, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "pwned" not in capsys.readouterr().out
    for out in outputs:  # nothing written where the output would have gone
        assert not os.path.exists(out), out
    assert checksums(files["root"]) == before  # nothing changed, nothing left behind


def test_the_table_is_long_enough():
    assert len(CASES) >= 60


# ---------------------------------------------------------------- writes that fail midway
def _half_then(error):
    """A writer that leaves half a file, then fails as the OS would."""
    def write(self, path, *args, **kwargs):
        Path(path).write_text("perturbation,gene,mean\nP0,g0,0.1\nP0,g1,0.")
        raise error
    return write


@pytest.mark.parametrize("error,message", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
])
def test_a_write_that_fails_midway_leaves_the_old_file(files, error, message, capsys,
                                                        monkeypatch):
    import pandas as pd

    target = Path(files["root"]) / "ate_existing.csv"
    before = checksums(files["root"])
    monkeypatch.setattr(pd.DataFrame, "to_csv", _half_then(error))
    code, err = run_cli(f"effects {files['run']} --perturbations P0 --num-draws 20 --n-cells 20 "
                        f"--out {target} --overwrite".split(), capsys)
    assert code == 2 and message in err and err.count("\n") == 0, err
    assert "ate_existing.csv" in err and ".tmp-" not in err, err  # the user's name, not ours
    assert checksums(files["root"]) == before  # old file intact, no temporary left


def test_disk_full_while_saving_a_run_leaves_no_folder(files, capsys, monkeypatch):
    import cradle_pyro.inference.run_io as run_io

    def full(run, path):
        (path / "config.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "model.pt"))

    monkeypatch.setattr(run_io, "_write_run", full)
    before = checksums(files["root"])
    code, err = run_cli(f"train {files['screen']} --no-doublets --epochs 1 --hidden-dim 16 "
                        f"--out {files['root']}/full_run".split(), capsys)
    last = err.splitlines()[-1]  # above it, the progress bar of the training
    assert code == 2 and last.startswith("cradle-pyro train: error: the disk is full"), err
    assert "full_run/model.pt" in last and ".tmp-" not in last, last
    assert last.endswith("stopped after epoch 1 of 1; the same command with --resume continues "
                         "from epoch 1"), last
    after = checksums(files["root"])
    # the interrupted training's checkpoint remains (for --resume); no run, no temporary
    new = {p for p in after if p not in before}
    assert all("/full_run/checkpoints/" in p for p in new), new
    assert not (Path(files["root"]) / "full_run" / "config.json").exists()
    shutil.rmtree(Path(files["root"]) / "full_run")


def test_a_file_held_open_by_another_writer_is_named_so(files, tmp_path):
    import subprocess
    import sys

    from cradle_pyro.inference.run_io import read_anndata

    path = tmp_path / "busy.h5ad"
    shutil.copy(files["screen"], path)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; "
                               "f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); "
                               "time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(Exception) as err:
            read_anndata(path)
        assert "held open for writing by another process" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- Ctrl-C
def _interrupt_at(epoch_to_stop):
    import cradle_pyro.inference.train as train

    real = train._train_epoch

    def epoch(*args, **kwargs):
        if args[6] == epoch_to_stop:  # (objective, model, guide, optimizer, data, tc, epoch, ...)
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    return epoch


def test_ctrl_c_during_train_says_how_to_resume(files, capsys, monkeypatch):
    import cradle_pyro.inference.train as train

    out = Path(files["root"]) / "interrupted_run"
    line = (f"train {files['screen']} --no-doublets --epochs 3 --hidden-dim 16 --latent-dim 3 "
            f"--num-particles 1 --out {out}").split()
    monkeypatch.setattr(train, "_train_epoch", _interrupt_at(2))
    code, err = run_cli(line, capsys)
    assert code == 130, err
    assert err.splitlines()[-1] == ("cradle-pyro train: interrupted after epoch 2 of 3; the same command with "
                   "--resume continues from epoch 2"), err
    assert not (out / "config.json").exists() and (out / "checkpoints" / "checkpoint.pt").exists()
    monkeypatch.undo()
    code, err = run_cli(line + ["--resume"], capsys)
    assert code == 0, err
    history = json.loads(json.dumps(list(__import__("pandas").read_csv(out / "history.csv")["epoch"])))
    assert history == [0, 1, 2]
    shutil.rmtree(out)


def test_ctrl_c_during_train_overwrite_keeps_the_old_run(files, capsys, monkeypatch):
    import cradle_pyro.inference.train as train

    old = Path(files["root"]) / "old_run"
    shutil.copytree(files["run"], old)
    before = checksums(files["root"])
    monkeypatch.setattr(train, "_train_epoch", _interrupt_at(1))
    code, err = run_cli(f"train {files['screen']} --no-doublets --epochs 3 --hidden-dim 16 "
                        f"--out {old} --overwrite".split(), capsys)
    assert code == 130, err
    assert err.splitlines()[-1].endswith("still holds what it held before (nothing was replaced)")
    assert checksums(files["root"]) == before  # not one file of the old run touched
    shutil.rmtree(old)


def test_ctrl_c_elsewhere_is_one_line_and_exit_130(files, capsys, monkeypatch):
    import cradle_pyro.inference.ensembles as ensembles

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ensembles, "ensemble_ate", interrupted)
    before = checksums(files["root"])
    code, err = run_cli(f"effects {files['run']} --perturbations P0 --out "
                        f"{files['root']}/never.csv".split(), capsys)
    assert code == 130 and err == "cradle-pyro effects: interrupted; no output was written or replaced"
    assert checksums(files["root"]) == before


# ---------------------------------------------------------------- --overwrite done right
def test_overwrite_through_a_symlinked_out_replaces_the_run_it_points_to(files, capsys):
    root = Path(files["root"])
    real = root / "real_runs"
    real.mkdir()
    shutil.copytree(files["run"], real / "run")
    (root / "run_link").symlink_to(real / "run")
    code, err = run_cli(f"train {files['screen']} --no-doublets --epochs 1 --hidden-dim 16 "
                        f"--latent-dim 3 --out {root / 'run_link'} --overwrite".split(), capsys)
    assert code == 0, err
    assert (root / "run_link").is_symlink()  # the user's link is kept and points to the new run
    config = json.loads((real / "run" / "config.json").read_text())
    assert config["train"]["epochs"] == 1 and config["model"]["latent_dim"] == 3
    assert sorted(p.name for p in real.iterdir()) == ["run"]  # no stray .run.old-* or temporary
    assert not [p for p in root.iterdir() if p.name.startswith((".run_link", ".run."))]
    shutil.rmtree(real)
    (root / "run_link").unlink()


def test_overwrite_never_follows_symlinks_out_of_the_run(files, capsys):
    root = Path(files["root"])
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    run = root / "linked_files_run"
    shutil.copytree(files["run"], run)
    shutil.move(run / "checkpoints", elsewhere / "checkpoints")
    (run / "checkpoints").symlink_to(elsewhere / "checkpoints")
    shutil.move(run / "model.pt", elsewhere / "model.pt")
    (run / "model.pt").symlink_to(elsewhere / "model.pt")
    kept = checksums(elsewhere)
    code, err = run_cli(f"train {files['screen']} --no-doublets --epochs 1 --hidden-dim 16 "
                        f"--out {run} --overwrite".split(), capsys)
    assert code == 0, err
    assert checksums(elsewhere) == kept  # what the links pointed to is untouched
    assert not (run / "model.pt").is_symlink() and (run / "config.json").exists()
    shutil.rmtree(run)
    shutil.rmtree(elsewhere)


def test_overwrite_replaces_an_output_but_an_input_never(files, capsys):
    root = Path(files["root"])
    out = root / "replace_me.csv"
    out.write_text("old\n")
    code, err = run_cli(f"effects {files['run']} --perturbations P0 --num-draws 20 --n-cells 20 "
                        f"--out {out} --overwrite".split(), capsys)
    assert code == 0, err
    assert out.read_text().startswith("perturbation,gene,mean")
    assert not list(root.glob(".replace_me*"))
    out.unlink()


# ---------------------------------------------------------------- labels and warnings
def test_any_label_can_be_asked_for_from_a_file(tmp_path, capsys):
    adata = simulate_screen(n_cells=400, n_genes=40, n_singles=3, n_combinations=1,
                            latent_dim=3, n_truth_cells=10, seed=2)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).str.replace(
        "P1", "IL2,low", regex=False)
    screen = tmp_path / "comma.h5ad"
    adata.write_h5ad(screen)
    run = tmp_path / "run"
    assert run_cli(f"train {screen} --no-doublets --epochs 1 --hidden-dim 16 --out {run}".split(),
                   capsys)[0] == 0
    wanted = tmp_path / "conditions.txt"
    wanted.write_text("# one per line\nIL2,low\nP0\n")
    code, err = run_cli(f"effects {run} --perturbations-file {wanted} --num-draws 20 --n-cells 20 "
                        f"--out {tmp_path / 'ate.csv'}".split(), capsys)
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(tmp_path / "ate.csv")
    assert sorted(table["perturbation"].unique()) == ["IL2,low", "P0"]


def _as_python_prints(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def test_few_draws_and_huge_counts_are_said_in_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", _as_python_prints)  # not pytest's recorder
    code, err = run_cli(f"effects {files['run']} --perturbations P0 --num-draws 5 --n-cells 10 "
                        f"--out {tmp_path / 'few.csv'}".split(), capsys)
    assert code == 0
    assert "cradle-pyro effects: warning: --num-draws 5: an interval from fewer than 20" in err
    adata = ad.read_h5ad(files["screen"])
    adata.X = adata.X.astype(np.float64)
    adata.X[0, 0] = 2.0 ** 40
    huge = tmp_path / "huge.h5ad"
    adata.write_h5ad(huge)
    code, err = run_cli(f"qc {huge} --no-doublets --out {tmp_path / 'qc.h5ad'}".split(), capsys)
    assert code == 0
    assert "warning: counts above 2^24 = 16,777,216 in 1 cells" in err


# ---------------------------------------------------------------- SIGKILL at random moments
KILL_WRITER = """
import sys, numpy as np, pandas as pd
from cradle_pyro.inference.outputs import write_csv
rows = int(sys.argv[2])
table = pd.DataFrame(np.random.default_rng(0).normal(size=(rows, 8)))
table["end"] = "complete"
while True:
    write_csv(table, sys.argv[1], index=False)
"""


def test_sigkill_at_random_moments_leaves_old_or_complete_file(tmp_path):
    """The file is always the old one or a whole new one (benchmarks/kill_writes.py does this
    with the CLI's effects, sample and counterfactual, 20 times each)."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "ate.csv"
    target.write_text("old\n")
    rng = np.random.default_rng(0)
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(target), "40000"])
        time.sleep(float(rng.uniform(1.5, 4.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = target.read_text()
        assert text == "old\n" or (text.count("\n") == 40001 and text.endswith("complete\n"))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ate.csv"]
    from cradle_pyro.inference.outputs import remove_stale_temporaries

    assert set(remove_stale_temporaries(target)) == set(leftovers)  # the next write tidies up
