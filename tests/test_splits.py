import numpy as np
import pytest

from cradle_pyro import CradleInputError, PerturbationData, make_split
from cradle_pyro.splits import targets_of


def test_unseen_combination_split_holds_out_only_combinations_with_trained_singles(small_screen):
    data = PerturbationData.from_anndata(small_screen, "perturbation", "control", doublets=False,
                                         split="unseen-combinations", heldout_fraction=0.5, seed=2)
    test_conds = set(data.conditions[data.split == "test"])
    train_conds = set(data.conditions[data.split == "train"])
    assert test_conds and all("+" in c for c in test_conds - {"control"})
    assert "control" in test_conds and "control" in train_conds   # half the controls held out
    for c in test_conds - {"control"}:
        assert c not in train_conds
        assert all(t in train_conds for t in targets_of(c, "control", "+"))
    assert (data.split == "val").mean() > 0.05


def test_random_split_is_seeded_and_proportional():
    conds = np.array(["control", "A", "B"] * 1000)
    a = make_split(conds, "random", seed=1)
    b = make_split(conds, "random", seed=1)
    assert (a == b).all()
    assert abs((a == "train").mean() - 0.8) < 0.03
    assert set(a) == {"train", "val", "test"}


def test_unseen_split_without_eligible_combination_errors():
    conds = np.array(["control", "A", "A+C"] * 5)
    with pytest.raises(CradleInputError, match="no combination"):
        make_split(conds, "unseen-combinations", control_label="control")
    with pytest.raises(CradleInputError, match="unknown split"):
        make_split(conds, "by-moon-phase")
