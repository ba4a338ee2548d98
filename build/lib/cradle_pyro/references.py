"""Counterfactual reference profiles for CRADLE's alignment term.

A cell's reference profile is the element-wise median of up to ``max_cells``
cells of the **same split** and the **same condition** in the **opposite
artifact state**. It depends only on that triple, so profiles are built once
per group and cells hold the index of their group (``-1`` where no peer
exists; such cells contribute nothing to the alignment term).

The counterfactual artifact vector of a group is the mean artifact vector of
its peers: all zeros for the clean references of artifact cells, and with a
single artifact kind exactly ``1 - a`` for clean cells.

Example
-------
>>> import numpy as np, scipy.sparse as sp
>>> counts = sp.csr_matrix(np.array([[1, 0], [3, 0], [0, 5], [0, 7]], dtype=np.float32))
>>> ref = build_reference_profiles(counts, np.array(["train"] * 4), np.array([0, 0, 0, 0]),
...                                np.array([[0], [0], [1], [1]], dtype=np.float32))
>>> ref.profiles[ref.cell_group[0]].tolist()   # clean cell 0 -> median of artifact cells
[0.0, 6.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class ReferenceProfiles:
    """Reference profiles per (split, condition, target artifact state) group."""

    profiles: np.ndarray          # groups × genes
    counterfactual_artifact: np.ndarray  # groups × artifact kinds
    condition: np.ndarray         # groups: condition code
    groups: pd.DataFrame          # split, condition code, reference_state, n_cells
    cell_group: np.ndarray        # cells: group index or -1


def build_reference_profiles(
    counts,
    split: np.ndarray,
    condition_code: np.ndarray,
    artifact: np.ndarray,
    max_cells: int = 50,
    artifact_cells_only: bool = False,
    seed: int = 0,
) -> ReferenceProfiles:
    """Build one median profile per (split, condition, opposite artifact state).

    Parameters
    ----------
    counts
        Cells × genes CSR matrix of counts.
    split, condition_code
        Per-cell split label and integer condition code.
    artifact
        Cells × kinds 0/1 matrix; a cell is an artifact cell if any kind is 1.
    max_cells
        Peers per group (drawn at random, seeded, when more are available).
    artifact_cells_only
        Give references to artifact cells only (the published choice); clean
        cells then get ``-1``.
    """
    rng = np.random.default_rng(seed)
    state = (np.asarray(artifact).sum(1) > 0).astype(int)
    n_cells = counts.shape[0]
    frame = pd.DataFrame({"split": split, "condition": condition_code, "state": state,
                          "cell": np.arange(n_cells)})
    members = frame.groupby(["split", "condition", "state"], sort=True)["cell"].apply(np.asarray)
    profiles, cf_art, rows = [], [], []
    cell_group = np.full(n_cells, -1, dtype=np.int64)
    for (sp_label, cond, st), cells in members.items():
        peers_key = (sp_label, cond, 1 - st)
        if peers_key not in members.index or (artifact_cells_only and st == 0):
            continue
        peers = members[peers_key]
        if len(peers) > max_cells:
            peers = np.sort(rng.choice(peers, max_cells, replace=False))
        dense = counts[peers].toarray()
        profiles.append(np.median(dense, axis=0))
        cf_art.append(np.asarray(artifact)[peers].mean(0))
        cell_group[cells] = len(rows)
        rows.append(dict(split=sp_label, condition=cond, reference_state=1 - st,
                         n_peers=len(peers)))
    n_genes = counts.shape[1]
    n_kinds = np.asarray(artifact).shape[1]
    groups = pd.DataFrame(rows, columns=["split", "condition", "reference_state", "n_peers"])
    return ReferenceProfiles(
        profiles=np.asarray(profiles, dtype=np.float32).reshape(-1, n_genes),
        counterfactual_artifact=np.asarray(cf_art, dtype=np.float32).reshape(-1, n_kinds),
        condition=groups["condition"].to_numpy(dtype=np.int64),
        groups=groups,
        cell_group=cell_group,
    )
