"""Condition labels: one spelling per condition, and separators that mean what they say.

:func:`normalise_labels` is applied to the perturbation column before anything
else reads it:

- whitespace around targets is dropped (``"P1 + P4"`` is ``"P1+P4"``) and
  spellings of one combination in another order become its first spelling
  (``"P4+P1"`` after ``"P1+P4"`` is ``"P1+P4"``), so one dosage is one condition;
- a label that is two known targets joined by another separator
  (``"P1_P4"`` when the separator is ``"+"`` and ``P1``, ``P4`` are seen alone)
  is refused, naming the label and the separator to use;
- a combination whose targets are never seen alone is accepted with a warning
  that names it: its effect can only be learnt from its own cells;
- a label with an empty part (``"P0+"``, ``"+P0"``, ``"P0++P1"``) or a target
  named twice (``"P0+P0"``) is refused: neither has one meaning.

Example
-------
>>> normalise_labels(["control", "P1 + P4", "P4+P1", "P1", "P4"], "control", "+").tolist()
['control', 'P1+P4', 'P1+P4', 'P1', 'P4']
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import CradleInputError

OTHER_SEPARATORS = ("+", "_", "|", ";", ",", "/", "-", ":")


def _parts(label: str, control_label: str, separator: str) -> tuple:
    if label.strip() == control_label.strip():
        return ()
    return tuple(check_targets(label, separator, control_label))


def check_targets(label: str, separator: str, control_label: str = "control") -> list:
    """The targets of a condition label; refuse empty parts and targets named twice.

    >>> check_targets("P1 + P4", "+")
    ['P1', 'P4']
    >>> check_targets("P0+P0", "+")
    Traceback (most recent call last):
    ...
    cradle_pyro.errors.CradleInputError: condition 'P0+P0' names target 'P0' twice; a dose is 0 or 1, so write 'P0'
    """
    parts = [p.strip() for p in str(label).split(separator)]
    if not any(parts):
        raise CradleInputError(f"condition label {label!r} names no target; "
                               f"use {control_label!r} for control cells")
    if not all(parts):
        named = separator.join(p for p in parts if p)
        raise CradleInputError(f"condition {label!r} has an empty part around {separator!r}; "
                               f"write {named!r} (or fix the separator)")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        once = separator.join(dict.fromkeys(parts))
        raise CradleInputError(f"condition {label!r} names target {twice[0]!r} twice; a dose is "
                               f"0 or 1, so write {once!r}")
    return parts


def normalise_labels(labels, control_label: str, separator: str) -> np.ndarray:
    """One spelling per condition; refuse mixed separators; warn on unseen singles."""
    labels = np.asarray(labels, dtype=object).astype(str)
    uniques = list(dict.fromkeys(labels))
    spelling = {}  # sorted targets -> the first spelling met
    canon = {}
    for u in uniques:
        parts = _parts(u, control_label, separator)
        key = tuple(sorted(parts))
        spelling.setdefault(key, separator.join(parts) if parts else control_label)
        canon[u] = spelling[key]
    conditions = set(canon.values())
    singles = {c for c in conditions if c != control_label and separator not in c}
    for c in sorted(conditions):
        if c == control_label or separator in c:
            continue
        for other in OTHER_SEPARATORS:
            if other == separator or other not in c:
                continue
            parts = [p.strip() for p in c.split(other)]
            if len(parts) > 1 and all(p in singles for p in parts):
                raise CradleInputError(
                    f"condition {c!r} joins known targets {parts} with {other!r} but the "
                    f"combination separator is {separator!r}; pass combination_separator="
                    f"{other!r} or relabel it {separator.join(parts)!r}")
    unseen = sorted(c for c in conditions if separator in c
                    and any(t not in singles for t in c.split(separator)))
    if unseen:
        warnings.warn(
            f"{len(unseen)} combination(s) have a target never seen alone: {unseen[:5]}; "
            "their effects can only be learnt from their own cells (no additive prior knowledge)",
            UserWarning, stacklevel=3)
    return np.array([canon[x] for x in labels], dtype=object)


__all__ = ["normalise_labels", "check_targets"]
