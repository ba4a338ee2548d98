"""Train / validation / test splits of cells.

Three kinds:

- ``"random"``: cells drawn at random (seeded) into the three sets;
- an obs column holding ``train`` / ``val`` / ``test`` per cell;
- ``"unseen-combinations"``: a fraction of the multi-target conditions whose
  single targets are all observed on their own go entirely to ``test``, and so
  does a share of the control cells (``heldout_control_fraction``, half by
  default); the other cells are split at random into ``train`` and ``val``.

Held-out control cells make an evaluation on equal terms possible: the truth
``mean(held-out condition) − mean(held-out control)`` then uses no cell any
predictor trained on, models and baselines alike
(:func:`cradle_pyro.inference.scoring.score_ates`). Half is the default because the
truth's control noise (∝ 1/held-out controls) and every predictor's
(∝ 1/training controls) add up least at an even split.

Example
-------
>>> import numpy as np
>>> conds = np.array(["control"] * 4 + ["A"] * 4 + ["B"] * 4 + ["A+B"] * 4)
>>> split = make_split(conds, "unseen-combinations", control_label="control",
...                    separator="+", heldout_fraction=1.0, seed=0)
>>> sorted(set(split[conds == "A+B"]))
['test']
>>> int((split[conds == "control"] == "test").sum())
2
"""

from __future__ import annotations

import numpy as np

from .errors import CradleInputError
from .labels import check_targets

SPLITS = ("train", "val", "test")
HELDOUT_CONTROL_FRACTION = 0.5


def targets_of(condition: str, control_label: str, separator: str) -> list[str]:
    """The single targets of a condition label (``[]`` for control)."""
    if condition == control_label:
        return []
    return check_targets(condition, separator, control_label)


def unseen_combination_conditions(conditions, control_label, separator, fraction, seed):
    """Multi-target conditions chosen for hold-out: their singles are all observed alone."""
    unique = sorted(set(conditions))
    singles_seen = {c for c in unique if len(targets_of(c, control_label, separator)) == 1}
    eligible = [
        c for c in unique
        if len(targets_of(c, control_label, separator)) > 1
        and all(t in singles_seen for t in targets_of(c, control_label, separator))
    ]
    if not eligible:
        raise CradleInputError(
            "split='unseen-combinations' found no combination whose single targets are all "
            "observed alone; use split='random' or an obs column"
        )
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(fraction * len(eligible))))
    return sorted(rng.choice(eligible, n_hold, replace=False).tolist())


def _random_split(n, fractions, rng):
    u = rng.random(n)
    train, val = fractions[0], fractions[0] + fractions[1]
    return np.where(u < train, "train", np.where(u < val, "val", "test")).astype(object)


def make_split(
    conditions,
    kind: str = "random",
    *,
    control_label: str = "control",
    separator: str = "+",
    fractions=(0.8, 0.1, 0.1),
    heldout_fraction: float = 0.25,
    heldout_control_fraction: float = HELDOUT_CONTROL_FRACTION,
    seed: int = 0,
    column_values=None,
) -> np.ndarray:
    """Split labels (``train`` / ``val`` / ``test``) for each cell.

    ``kind`` is ``"random"``, ``"unseen-combinations"`` or ``"column"`` (then
    ``column_values`` holds the labels). ``heldout_control_fraction`` is the
    share of control cells ``"unseen-combinations"`` puts in ``test`` (drawn
    at random, seeded; 0 keeps them all for training, as releases before 0.5
    did).
    """
    conditions = np.asarray(conditions, dtype=object)
    rng = np.random.default_rng(seed)
    if kind == "random":
        split = _random_split(len(conditions), fractions, rng)
    elif kind == "unseen-combinations":
        held = unseen_combination_conditions(conditions, control_label, separator,
                                             heldout_fraction, seed)
        val_share = fractions[1] / (fractions[0] + fractions[1])
        split = _random_split(len(conditions), (1 - val_share, val_share, 0.0), rng)
        split[np.isin(conditions, held)] = "test"
        split[_control_share(conditions == control_label, heldout_control_fraction, rng)] = "test"
    elif kind == "column":
        split = np.asarray(column_values, dtype=object).astype(str)
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise CradleInputError(
                f"split column holds values {bad[:5]}; every cell must be one of {list(SPLITS)}"
            )
    else:
        raise CradleInputError(
            f"unknown split {kind!r}; use 'random', 'unseen-combinations' or an obs column name"
        )
    check_targets_trained(conditions, split, control_label, separator)
    return split


def _control_share(is_control, fraction, rng) -> np.ndarray:
    """A seeded mask of ``round(fraction · controls)`` control cells."""
    if not 0.0 <= fraction < 1.0:
        raise CradleInputError(f"heldout_control_fraction={fraction}: give a share in [0, 1); "
                               "training needs control cells")
    idx = np.flatnonzero(is_control)
    mask = np.zeros(len(is_control), dtype=bool)
    mask[rng.choice(idx, int(round(fraction * len(idx))), replace=False)] = True
    return mask


def check_targets_trained(conditions, split, control_label, separator):
    """Raise when a target (or a combination's single) has no training cell."""
    all_targets = {t for c in set(conditions) for t in targets_of(c, control_label, separator)}
    trained = {
        t for c in set(conditions[split == "train"]) for t in targets_of(c, control_label, separator)
    }
    missing = sorted(all_targets - trained)
    if missing:
        where = sorted({c for c in set(conditions)
                        if set(targets_of(c, control_label, separator)) & set(missing)})
        raise CradleInputError(
            f"target(s) {missing[:5]} have zero cells in training (used by {where[:5]}); "
            "their effects cannot be learnt: move some of their cells to 'train' "
            "or drop these conditions"
        )
    if not (split == "train").any():
        raise CradleInputError("the split leaves no cell in 'train'")
