"""``PerturbationData``: a perturbation screen ready for the model.

Built from AnnData (raw counts in ``X`` or a layer, CSR kept sparse). Holds
the dosage matrix (cells × single targets; ``A+B`` sets both; control all
zeros), the artifact matrix (cells × artifact kinds), library sizes, split
labels, counterfactual reference profiles, per-target and per-artifact cell
counts for plate reweighting, and names. Minibatches densify only the batch.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> adata = simulate_screen(n_cells=300, n_genes=100, seed=0)
>>> data = PerturbationData.from_anndata(adata, perturbation_key="perturbation",
...                                      control_label="control", doublets=False)
>>> batch = next(data.batches("train", batch_size=32, seed=0))
>>> tuple(batch.counts.shape), tuple(batch.dosage.shape)
((32, 100), (32, 10))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .disk_counts import DiskCounts, block_groups
from .errors import CradleInputError
from .labels import normalise_labels
from .validation import check_counts, check_shape_and_names, in_memory
from .qc import (CRITERIA, QCThresholds, artifact_covariates, label_artifacts, qc_metrics,
                 robust_scale)
from .references import ReferenceProfiles, build_reference_profiles
from .splits import HELDOUT_CONTROL_FRACTION, make_split, targets_of


CHUNK_CELLS = 20_000  # cells per chunk of whole-data passes (standardisation)


class Reference(NamedTuple):
    """The reference groups present in one minibatch.

    ``cell_group`` indexes rows of ``profiles`` (``-1``: no reference);
    ``dosage`` and ``artifact`` are the group's dosage and counterfactual
    artifact vectors.
    """

    cell_group: torch.Tensor
    profiles: torch.Tensor
    dosage: torch.Tensor
    artifact: torch.Tensor


@dataclass
class Batch:
    """One minibatch of cells, dense, on one device."""

    counts: torch.Tensor
    dosage: torch.Tensor
    artifact: torch.Tensor
    library: torch.Tensor
    cell_index: torch.Tensor
    num_cells: int
    reference: Reference | None = None
    qc: torch.Tensor | None = None
    flags: torch.Tensor | None = None

    def model_kwargs(self) -> dict:
        """Keyword arguments of the model and guide."""
        return dict(counts=self.counts, dosage=self.dosage, artifact=self.artifact,
                    library=self.library, qc=self.qc, flags=self.flags,
                    cell_index=self.cell_index, num_cells=self.num_cells, reference=self.reference)

    @property
    def size(self) -> int:
        return self.counts.shape[0]


def _on_disk_counts(adata, keep, layer):
    X = adata.X if layer is None else adata.layers[layer]
    if not hasattr(X, "to_memory"):
        raise CradleInputError("counts_on_disk=True needs a backed AnnData: "
                               "anndata.read_h5ad(path, backed='r')")
    if not keep.all():
        raise CradleInputError(
            f"counts_on_disk=True reads the file's rows as they are, but {int((~keep).sum())} "
            "cells would be dropped (drop_labels); write the kept cells to their own file, or "
            "pass drop_labels=()")
    return X


class _DeviceCSR:
    """CSR arrays as torch tensors; densifies a set of rows with torch ops only."""

    def __init__(self, matrix: sp.csr_matrix, device):
        # On the CPU the tensors share the CSR arrays (no copy): int32 column
        # indices stay int32 and are widened per batch only.
        self.shape = matrix.shape
        self.indptr = torch.as_tensor(matrix.indptr.astype(np.int64, copy=False), device=device)
        self.indices = torch.as_tensor(matrix.indices, device=device)
        self.data = torch.as_tensor(np.asarray(matrix.data, dtype=np.float32), device=device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        start, stop = self.indptr[idx], self.indptr[idx + 1]
        lengths = stop - start
        out = torch.zeros(len(idx), self.shape[1], device=self.data.device)
        total = int(lengths.sum())
        if total == 0:
            return out
        row = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), lengths)
        offset = torch.arange(total, device=idx.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        pos = torch.repeat_interleave(start, lengths) + offset
        out[row, self.indices[pos].long()] = self.data[pos]
        return out


def _batch_starts(n: int, batch_size: int, drop_last: bool) -> range:
    """Start positions of the batches of ``n`` cells (a short last batch dropped if asked)."""
    stop = n - (n % batch_size if drop_last and n > batch_size else 0)
    return range(0, stop, batch_size)


class _StageClock:
    """Wall seconds of consecutive stages (``stop(name)`` ends the current one)."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.seconds = {}

    def stop(self, name):
        now = self._now()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


class _DiskRows:
    """Rows of :class:`DiskCounts` as dense tensors on ``device`` (read per call)."""

    def __init__(self, counts: DiskCounts, device):
        self.counts, self.device = counts, device

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        block = self.counts[idx.cpu().numpy()]
        return torch.as_tensor(block.toarray(), dtype=torch.float32, device=self.device)


def _validate_anndata(adata, perturbation_key, control_label, layer):
    check_shape_and_names(adata)
    if perturbation_key not in adata.obs:
        raise CradleInputError(
            f"perturbation column {perturbation_key!r} not in obs; obs has "
            f"{list(adata.obs.columns)} (pass perturbation_key=...)"
        )
    if layer is not None and layer not in adata.layers:
        raise CradleInputError(
            f"layer {layer!r} not found; available layers: {sorted(adata.layers)} "
            "(pass layer=None to use X)"
        )
    labels = adata.obs[perturbation_key]
    if labels.isna().any():
        raise CradleInputError(
            f"perturbation column {perturbation_key!r} is missing in {int(labels.isna().sum())} "
            "cells; label them (e.g. as the control) or drop them"
        )
    if control_label not in set(labels.astype(str)):
        values = sorted(set(labels.astype(str)))
        raise CradleInputError(
            f"control label {control_label!r} is not a value of {perturbation_key!r}; "
            f"values include {values[:8]} (pass control_label=...)"
        )


@dataclass
class PerturbationData:
    """A perturbation screen as the model sees it. Build with :meth:`from_anndata`."""

    counts: sp.csr_matrix
    dosage: np.ndarray
    artifact: np.ndarray
    library: np.ndarray
    split: np.ndarray
    conditions: np.ndarray          # per cell: condition label
    condition_names: list
    condition_dosage: np.ndarray    # conditions × targets
    condition_code: np.ndarray      # per cell: index into condition_names
    references: ReferenceProfiles
    gene_names: list
    perturbation_names: list
    artifact_names: list
    obs_names: list
    control_label: str = "control"
    separator: str = "+"
    qc_thresholds: QCThresholds | None = None
    qc_table: pd.DataFrame | None = None
    gene_mean: np.ndarray | None = None   # of log1p(1e4·x/library) on training cells
    gene_std: np.ndarray | None = None
    # QC flags per criterion (cells × flags; the artifact columns when QC did not
    # run here) and QC covariates (robustly standardised on training cells): the
    # evidence of a latent artifact state
    qc_flags: np.ndarray | None = None
    qc_flag_names: list = field(default_factory=list)
    qc_covariates: np.ndarray | None = None
    qc_covariate_names: list = field(default_factory=list)
    qc_covariate_centre: np.ndarray | None = None
    qc_covariate_scale: np.ndarray | None = None
    _device_cache: dict = field(default_factory=dict, repr=False)
    build_seconds: dict = field(default_factory=dict, repr=False)  # from_anndata's stages

    # ------------------------------------------------------------------ build
    @classmethod
    def from_anndata(
        cls,
        adata: ad.AnnData,
        perturbation_key: str = "perturbation",
        control_label: str = "control",
        *,
        combination_separator: str = "+",
        layer: str | None = None,
        artifact: str | list | None = None,
        qc_k: float = 3.0,
        qc_columns: dict | None = None,
        doublets: bool = True,
        artifact_kinds: str = "any",
        split: str = "random",
        split_fractions=(0.8, 0.1, 0.1),
        heldout_fraction: float = 0.25,
        heldout_control_fraction: float = HELDOUT_CONTROL_FRACTION,
        drop_labels=("unassigned",),
        non_integer_counts: str = "error",
        reference_cells: int = 50,
        reference_artifact_cells_only: bool = False,
        counts_on_disk: bool = False,
        seed: int = 0,
    ) -> "PerturbationData":
        """Build from AnnData; ``adata`` itself is never modified.

        Parameters
        ----------
        adata
            Cells × genes with raw counts in ``X`` or ``layer``.
        perturbation_key, control_label, combination_separator
            obs column of condition labels; the control's label; the separator
            of combinations (``"A+B"``).
        artifact
            ``None``: label artifacts by QC here (``qc_k``, ``qc_columns``,
            ``doublets``, ``artifact_kinds`` as in
            :func:`cradle_pyro.qc.label_artifacts`); or an obs column (0/1) or
            list of columns, one artifact kind each.
        split
            ``"random"``, ``"unseen-combinations"`` or an obs column with
            ``train`` / ``val`` / ``test``.
        heldout_fraction, heldout_control_fraction
            For ``"unseen-combinations"``: the share of eligible combinations,
            and of control cells, held out in ``test``
            (:func:`cradle_pyro.splits.make_split`).
        drop_labels
            Condition labels whose cells are dropped (Papalexi's
            ``"unassigned"``); pass ``()`` to keep them as a condition of their own.
        non_integer_counts
            ``"error"`` or ``"round"``.
        reference_cells, reference_artifact_cells_only
            Peers per reference profile; give references to artifact cells only.
        counts_on_disk
            With a backed AnnData (``read_h5ad(path, backed="r")``): keep the
            counts in the file and read them in chunks and batch groups
            (:mod:`cradle_pyro.disk_counts`); memory is bounded by the chunk
            and the batch group, not by the data set. scrublet needs the
            matrix in memory and is skipped.
        seed
            Seeds the split, scrublet and the choice of reference peers.
        """
        clock = _StageClock()
        _validate_anndata(adata, perturbation_key, control_label, layer)
        labels_all = adata.obs[perturbation_key].astype(str).to_numpy()
        keep = ~np.isin(labels_all, list(drop_labels))
        if not keep.any():
            raise CradleInputError(f"dropping {list(drop_labels)} leaves no cell")
        view = adata[keep] if not keep.all() else adata
        if counts_on_disk:
            X = _on_disk_counts(adata, keep, layer)
            if check_counts(X, "error"):
                raise CradleInputError("counts_on_disk cannot round counts; load them in memory")
            counts = DiskCounts(X)
            if doublets:
                import warnings

                warnings.warn("scrublet needs the count matrix in memory: doublets are not "
                              "predicted with counts_on_disk=True", UserWarning, stacklevel=2)
                doublets = False
        else:
            X = in_memory(view.X if layer is None else view.layers[layer])
            rounded = check_counts(X, non_integer_counts)
            # the user's matrix is shared, never written to: copied only to convert or round
            counts = sp.csr_matrix(X, dtype=np.float32, copy=rounded)
            if rounded:
                counts.data = np.round(counts.data)
                counts.eliminate_zeros()
        clock.stop("counts")
        library = np.asarray(counts.sum(1)).ravel().astype(np.float32)
        if (library <= 0).any():
            raise CradleInputError(
                f"{int((library <= 0).sum())} cells have no counts in any gene; "
                "drop them (e.g. sc.pp.filter_cells(adata, min_counts=1))"
            )
        labels = normalise_labels(labels_all[keep], control_label, combination_separator)
        condition_names = sorted(set(labels), key=lambda c: (c != control_label, c))
        code_of = {c: i for i, c in enumerate(condition_names)}
        condition_code = np.array([code_of[c] for c in labels], dtype=np.int64)
        targets = sorted({t for c in condition_names
                          for t in targets_of(c, control_label, combination_separator)})
        if not targets:
            raise CradleInputError(
                f"every cell in {perturbation_key!r} is a control ({control_label!r}): a screen "
                "needs perturbed cells to learn an effect; check the control label "
                "(control_label=...) or the perturbation column (perturbation_key=...)")
        t_index = {t: i for i, t in enumerate(targets)}
        condition_dosage = np.zeros((len(condition_names), len(targets)), dtype=np.float32)
        for i, c in enumerate(condition_names):
            for t in targets_of(c, control_label, combination_separator):
                condition_dosage[i, t_index[t]] = 1.0

        split_labels = make_split(
            labels,
            "column" if split in view.obs else split,
            control_label=control_label, separator=combination_separator,
            fractions=split_fractions, heldout_fraction=heldout_fraction,
            heldout_control_fraction=heldout_control_fraction, seed=seed,
            column_values=view.obs[split].to_numpy() if split in view.obs else None,
        )

        clock.stop("labels_and_split")
        qc_thresholds, qc_table = None, None
        qc_view = ad.AnnData(X=counts if not counts_on_disk else X, obs=view.obs.copy(),
                             var=pd.DataFrame(index=view.var_names))
        if artifact is None:
            qc_thresholds, qc_table = label_artifacts(
                qc_view, k=qc_k, columns=qc_columns, doublets=doublets,
                artifact_kinds=artifact_kinds, seed=seed, inplace=False)
            artifact_mat = qc_thresholds.artifact_matrix(qc_table)
            artifact_names = qc_thresholds.kinds
        else:
            cols = [artifact] if isinstance(artifact, str) else list(artifact)
            missing = [c for c in cols if c not in view.obs]
            if missing:
                raise CradleInputError(
                    f"artifact column(s) {missing} not in obs; obs has {list(view.obs.columns)}"
                )
            artifact_mat = view.obs[cols].to_numpy(dtype=np.float32)
            if not np.isin(artifact_mat, (0.0, 1.0)).all():
                raise CradleInputError(f"artifact column(s) {cols} must hold 0/1 or booleans")
            artifact_names = cols

        clock.stop("qc")
        references = build_reference_profiles(
            counts, split_labels, condition_code, artifact_mat, max_cells=reference_cells,
            artifact_cells_only=reference_artifact_cells_only, seed=seed)
        clock.stop("references")

        data = cls(
            counts=counts, dosage=condition_dosage[condition_code], artifact=artifact_mat,
            library=library, split=split_labels, conditions=labels,
            condition_names=condition_names, condition_dosage=condition_dosage,
            condition_code=condition_code, references=references,
            gene_names=list(map(str, view.var_names)), perturbation_names=targets,
            artifact_names=list(artifact_names), obs_names=list(map(str, view.obs_names)),
            control_label=control_label, separator=combination_separator,
            qc_thresholds=qc_thresholds, qc_table=qc_table,
        )
        data.gene_mean, data.gene_std = data._log_standardisation()
        clock.stop("standardisation")
        covariates = artifact_covariates(qc_table if qc_table is not None else qc_metrics(qc_view),
                                         view.obs, qc_thresholds)
        values = covariates.to_numpy(dtype=float)
        centre, scale = robust_scale(values[split_labels == "train"])
        data.set_qc_covariates(values, list(covariates.columns), centre, scale)
        if qc_thresholds is not None:
            names = [c for c in CRITERIA if qc_thresholds._is_active(c)]
            data.qc_flags = qc_table[[f"qc_{c}" for c in names]].to_numpy(dtype=np.float32)
            data.qc_flag_names = names
        else:
            data.qc_flags, data.qc_flag_names = artifact_mat.copy(), list(artifact_names)
        clock.stop("qc_covariates")
        data.build_seconds = clock.seconds
        return data

    def set_qc_covariates(self, values, names, centre, scale):
        """Raw QC covariates (cells × names), standardised by ``(values − centre) / scale``."""
        self.qc_covariates = ((np.asarray(values, dtype=float) - centre) / scale).astype(np.float32)
        self.qc_covariate_names = list(names)
        self.qc_covariate_centre = np.asarray(centre, dtype=float)
        self.qc_covariate_scale = np.asarray(scale, dtype=float)
        self._device_cache.clear()

    def _row_chunks(self, idx):
        """``(rows, csr)`` for the cells ``idx`` in chunks: memory bounded by the chunk, not the data set."""
        for start in range(0, len(idx), CHUNK_CELLS):
            rows = idx[start:start + CHUNK_CELLS]
            yield rows, self.counts[rows]

    def _gene_sum(self, csr, power: int = 1) -> np.ndarray:
        return np.bincount(csr.indices, weights=csr.data ** power, minlength=self.n_genes)

    def gene_totals(self, split: str | None = "train") -> np.ndarray:
        """Counts of each gene summed over a split's cells (in chunks of cells, no copy of the split)."""
        total = np.zeros(self.n_genes)
        for _, block in self._row_chunks(self.indices(split)):
            total += self._gene_sum(block)
        return total

    def _log_standardisation(self):
        """Gene mean and std of log1p(1e4·x/library) on training cells; std 0 → 1."""
        train = np.flatnonzero(self.split == "train")
        total = np.zeros(self.n_genes)
        total_sq = np.zeros(self.n_genes)
        for rows, norm in self._row_chunks(train):
            norm.data = np.log1p(norm.data * np.repeat(1e4 / self.library[rows],
                                                       np.diff(norm.indptr)))
            total += self._gene_sum(norm)
            total_sq += self._gene_sum(norm, 2)
        mean = total / max(len(train), 1)
        var = total_sq / max(len(train), 1) - mean ** 2
        std = np.sqrt(np.clip(var, 0, None))
        # all-zero genes (half of the Norman panel) would divide by zero
        std[std < 1e-6] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    # -------------------------------------------------------------- counting
    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def n_perturbations(self) -> int:
        return len(self.perturbation_names)

    @property
    def n_artifacts(self) -> int:
        return len(self.artifact_names)

    @property
    def n_qc_covariates(self) -> int:
        return len(self.qc_covariate_names)

    @property
    def n_qc_flags(self) -> int:
        return len(self.qc_flag_names)

    def indices(self, split: str | None) -> np.ndarray:
        """Cell positions of a split (all cells for ``None``)."""
        if split is None:
            return np.arange(self.n_cells)
        idx = np.flatnonzero(self.split == split)
        return idx

    def perturbation_cell_counts(self, split: str = "train") -> np.ndarray:
        """Cells receiving each target in ``split`` (n_p of the plate reweighting)."""
        return self.dosage[self.indices(split)].sum(0)

    def artifact_cell_counts(self, split: str = "train") -> np.ndarray:
        """Cells with each artifact kind in ``split`` (n_a of the plate reweighting)."""
        return self.artifact[self.indices(split)].sum(0)

    def summary(self) -> pd.DataFrame:
        """Cells per condition and split, with artifact shares."""
        df = pd.DataFrame({"condition": self.conditions, "split": self.split,
                           "artifact": self.artifact.max(1) if self.n_artifacts else 0})
        return df.groupby(["condition", "split"]).agg(
            n_cells=("artifact", "size"), artifact_share=("artifact", "mean")).reset_index()

    def subset(self, split: str) -> "PerturbationData":
        """The cells of one split (references and QC kept for those cells)."""
        return self.take(self.indices(split))

    def resample_training(self, seed: int) -> "PerturbationData":
        """The screen with each condition's training cells drawn with replacement (as many as
        it had); the other splits are kept as they are. One bootstrap replicate of the cells
        a run learns from (:func:`cradle_pyro.inference.ensembles.fit_ensemble`)."""
        rng = np.random.default_rng(seed)
        train = self.split == "train"
        keep = [np.flatnonzero(~train)]
        for code in np.unique(self.condition_code[train]):
            cells = np.flatnonzero(train & (self.condition_code == code))
            keep.append(rng.choice(cells, len(cells), replace=True))
        return self.take(np.sort(np.concatenate(keep)))

    def take(self, idx) -> "PerturbationData":
        """The cells at positions ``idx`` (repeats allowed; references and QC kept for them)."""
        idx = np.asarray(idx)
        ref = self.references
        refs = ReferenceProfiles(ref.profiles, ref.counterfactual_artifact, ref.condition,
                                 ref.groups, ref.cell_group[idx])
        return PerturbationData(
            counts=self.counts[idx], dosage=self.dosage[idx], artifact=self.artifact[idx],
            library=self.library[idx], split=self.split[idx], conditions=self.conditions[idx],
            condition_names=self.condition_names, condition_dosage=self.condition_dosage,
            condition_code=self.condition_code[idx], references=refs,
            gene_names=self.gene_names, perturbation_names=self.perturbation_names,
            artifact_names=self.artifact_names, obs_names=[self.obs_names[i] for i in idx],
            control_label=self.control_label, separator=self.separator,
            qc_thresholds=self.qc_thresholds,
            qc_table=None if self.qc_table is None else self.qc_table.iloc[idx],
            gene_mean=self.gene_mean, gene_std=self.gene_std,
            qc_covariates=None if self.qc_covariates is None else self.qc_covariates[idx],
            qc_covariate_names=self.qc_covariate_names,
            qc_covariate_centre=self.qc_covariate_centre, qc_covariate_scale=self.qc_covariate_scale,
            qc_flags=None if self.qc_flags is None else self.qc_flags[idx],
            qc_flag_names=self.qc_flag_names,
        )

    def dosage_of(self, condition: str) -> np.ndarray:
        """The dosage vector of a condition label such as ``"A+B"`` (seen or not)."""
        vec = np.zeros(self.n_perturbations, dtype=np.float32)
        if condition == self.control_label:
            return vec
        for t in targets_of(condition, self.control_label, self.separator):
            if t not in self.perturbation_names:
                raise CradleInputError(
                    f"target {t!r} of {condition!r} was never observed; known targets: "
                    f"{self.perturbation_names[:10]}{'…' if self.n_perturbations > 10 else ''}"
                )
            vec[self.perturbation_names.index(t)] = 1.0
        return vec

    # ------------------------------------------------------------- batching
    def _on(self, device) -> dict:
        key = str(torch.device(device))
        if key not in self._device_cache:
            t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt, device=device)
            ref = self.references
            self._device_cache[key] = dict(
                counts=_DeviceCSR(self.counts, device) if not self.on_disk else _DiskRows(self.counts, device),
                dosage=t(self.dosage), artifact=t(self.artifact), library=t(self.library),
                cell_group=t(ref.cell_group, torch.int64),
                profiles=t(ref.profiles),
                ref_dosage=t(self.condition_dosage[ref.condition] if len(ref.condition)
                             else np.zeros((0, self.n_perturbations))),
                ref_artifact=t(ref.counterfactual_artifact),
                qc=t(self.qc_covariates if self.qc_covariates is not None
                     else np.zeros((self.n_cells, 0))),
                flags=t(self.qc_flags if self.qc_flags is not None else self.artifact),
            )
        return self._device_cache[key]

    def batch(self, index, device="cpu", num_cells: int | None = None, counts=None) -> Batch:
        """The cells at positions ``index`` as one dense :class:`Batch` (``counts``: their rows, if read)."""
        on = self._on(device)
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64, device=device)
        groups = on["cell_group"][idx]
        present, inverse = torch.unique(groups[groups >= 0], return_inverse=True)
        cell_group = torch.full_like(groups, -1)
        cell_group[groups >= 0] = inverse
        reference = Reference(cell_group, on["profiles"][present], on["ref_dosage"][present],
                              on["ref_artifact"][present])
        return Batch(
            counts=counts if counts is not None else on["counts"].rows(idx), dosage=on["dosage"][idx],
            artifact=on["artifact"][idx], library=on["library"][idx], cell_index=idx,
            num_cells=num_cells or len(idx), reference=reference, qc=on["qc"][idx],
            flags=on["flags"][idx],
        )

    def batches(
        self,
        split: str | None = "train",
        batch_size: int = 256,
        shuffle: bool = True,
        seed: int | None = None,
        device="cpu",
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """Minibatches of a split; each densified on ``device`` when drawn.

        ``num_cells`` of every batch is the size of the split, so the model's
        cell plate scales local terms by N/B. ``shard=(rank, world_size)``
        yields only this rank's share of the (shuffled) cells, for
        data-parallel training: every rank's loss is then an unbiased
        estimate of the same full-data objective.
        """
        idx = self.indices(split)
        if len(idx) == 0:
            raise CradleInputError(f"split {split!r} holds no cells")
        n_split = len(idx)
        if shuffle:
            idx = np.random.default_rng(seed).permutation(idx)
        rank, world = shard
        if world > 1:
            # equal shards, so every rank takes the same number of steps
            idx = idx[:len(idx) // world * world][rank::world]
        if self.on_disk:  # read a group of random blocks at once, shuffle within it
            yield from self._disk_batches(idx, batch_size, shuffle, seed, device, n_split, drop_last)
            return
        for start in _batch_starts(len(idx), batch_size, drop_last):
            yield self.batch(idx[start:start + batch_size], device=device, num_cells=n_split)

    @property
    def on_disk(self) -> bool:
        """Whether the counts stay in their file (``counts_on_disk=True``)."""
        return isinstance(self.counts, DiskCounts)

    def _disk_batches(self, idx, batch_size, shuffle, seed, device, n_split, drop_last):
        rng = np.random.default_rng(None if seed is None else seed + 1)
        for group in block_groups(np.sort(idx), shuffle, seed):
            rows = _DeviceCSR(self.counts[group], device)
            order = rng.permutation(len(group)) if shuffle else np.arange(len(group))
            for start in _batch_starts(len(order), batch_size, drop_last):
                local = torch.as_tensor(order[start:start + batch_size], device=device)
                yield self.batch(group[order[start:start + batch_size]], device=device,
                                 num_cells=n_split, counts=rows.rows(local))
