"""Running means of per-cell vectors by treatment group, across minibatches.

The basal-leakage penalty (:meth:`cradle_pyro.inference.objective.CradleELBO.basal_leakage`)
constrains the *full-data* mean of q(basal) locations within each treatment
group. A minibatch holds few cells of many groups (on Norman a batch of 128
spreads over about 33 groups, a third of them with one or two cells), and a
group mean computed inside the batch contains each cell's own location with
weight 1/n: for a group of one the "mean" is the cell itself, and the
penalty turns into a pull of that cell's basal location towards 0.

:class:`RunningGroupMeans` keeps exponentially decayed sums and counts per
group over recent batches, so the penalty's gradient for a cell is its
group's mean over many batches (detached), as it is for the full-data
penalty ``Σ_g N_g · ½‖m_g‖²`` (whose gradient for a cell of group g is m_g).

Example
-------
>>> import torch
>>> means = RunningGroupMeans(decay=0.5)
>>> keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> values = torch.tensor([[2.0], [4.0], [-1.0]])
>>> means.update(keys, values).squeeze(-1).tolist()
[3.0, 3.0, -1.0]
>>> means.update(keys[:1], torch.tensor([[6.0]])).squeeze(-1).tolist()  # (0.5·6 + 6) / (0.5·2 + 1)
[4.5]
"""

from __future__ import annotations

import torch


class RunningGroupMeans:
    """Exponentially decayed per-group means; groups are the distinct rows of a key tensor.

    Parameters
    ----------
    decay
        Factor applied to the stored sums and counts before each batch is
        added: about ``1 / (1 - decay)`` recent batches are remembered (0.95:
        20, about one epoch of 128-cell batches on the Norman subset and the
        3,000-cell simulated screens; long enough to see each group several
        times, short enough to follow the encoder as it trains).
    """

    def __init__(self, decay: float = 0.95):
        if not 0 <= decay < 1:
            raise ValueError(f"decay={decay} must be in [0, 1)")
        self.decay = decay
        self.keys = None    # (G, K) the groups seen so far
        self.sums = None    # (G, D)
        self.counts = None  # (G,)

    def reset(self):
        self.keys = self.sums = self.counts = None

    def state_dict(self) -> dict:
        """The remembered groups, sums and counts (for checkpoints)."""
        return {"keys": self.keys, "sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state: dict):
        self.keys, self.sums, self.counts = state["keys"], state["sums"], state["counts"]

    def _group_ids(self, keys: torch.Tensor) -> torch.Tensor:
        """Index of each row's group in the stored table, adding new groups."""
        keys = keys.detach()
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        if self.keys is None or self.keys.device != keys.device:
            self.keys = unique[:0]
            self.sums = self.counts = None
        match = (unique[:, None, :] == self.keys[None, :, :]).all(-1)  # (U, G)
        known = match.any(-1)
        slot = (match.float().argmax(-1) if len(self.keys)
                else torch.zeros(len(unique), dtype=torch.long, device=keys.device))
        new = (~known).nonzero().squeeze(-1)
        slot[new] = len(self.keys) + torch.arange(len(new), device=keys.device)
        self.keys = torch.cat([self.keys, unique[new]])
        return slot[inverse]

    @torch.no_grad()
    def update(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Add a batch (``keys`` (B, K), ``values`` (B, D)); return each row's group mean (B, D)."""
        group = self._group_ids(keys)
        n_groups = len(self.keys)
        values = values.detach()
        sums = torch.zeros(n_groups, values.shape[-1], dtype=values.dtype, device=values.device)
        counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
        if self.sums is not None:
            sums[: len(self.sums)] = self.decay * self.sums
            counts[: len(self.counts)] = self.decay * self.counts
        self.sums = sums.index_add(0, group, values)
        self.counts = counts.index_add(0, group, torch.ones_like(values[:, 0]))
        return self.sums[group] / self.counts[group, None]
