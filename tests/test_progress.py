"""Progress suits its place, and epochs follow the size of the screen unless given."""

import io

from cradle_pyro.inference.cli import main
from cradle_pyro.inference.train import TrainConfig, epochs_for
from cradle_pyro.progress import Progress


def test_a_log_gets_a_line_every_tenth_not_every_step():
    log = io.StringIO()
    bar = Progress(200, "train cradle", stream=log)
    for _ in range(200):
        bar.update(loss="1.0")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("train cradle: 20/200 (") and "left" in lines[0]
    assert lines[-1].startswith("train cradle: 200/200 (") and "left" not in lines[-1]


def test_quiet_writes_nothing():
    log = io.StringIO()
    bar = Progress(50, "x", enabled=False, stream=log)
    for _ in range(50):
        bar.update()
    bar.write("never")
    assert log.getvalue() == ""


def test_epochs_follow_the_number_of_training_cells():
    assert [epochs_for(n) for n in (500, 2_700, 20_000, 40_000, 100_000, 1_000_000)] == \
        [200, 200, 200, 100, 40, 10]
    chosen = TrainConfig().for_cells(40_000)
    assert chosen.epochs == 100 and chosen.epochs_auto
    given = TrainConfig(epochs=7).for_cells(40_000)
    assert given.epochs == 7 and not given.epochs_auto


def test_train_in_a_log_says_the_rule_and_the_time(small_screen, tmp_path, capsys):
    path = tmp_path / "screen.h5ad"
    small_screen[:400].copy().write_h5ad(path)
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--no-doublets", "--epochs", "10",
                 "--hidden-dim", "16", "--num-particles", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("train cradle: epoch 1 took ") and "10 epochs take about" in err[0]
    assert sum(line.startswith("train cradle: ") for line in err) == 11  # estimate + 10 lines
    assert main(["train", str(path), "--out", str(tmp_path / "quiet"), "--no-doublets",
                 "--epochs", "2", "--hidden-dim", "16", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
