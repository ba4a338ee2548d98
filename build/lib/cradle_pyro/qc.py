"""Quality control: label technical artifacts with k·MAD rules and scrublet.

Six criteria, each a one-sided outlier rule on a scanpy QC metric
(:func:`scanpy.pp.calculate_qc_metrics` names) or on an obs column the user
points at instead:

================  ===============================  =========
criterion         default metric                   direction
================  ===============================  =========
low_total_counts  ``log1p_total_counts``           low
low_n_genes       ``log1p_n_genes_by_counts``      low
high_pct_mt       ``pct_counts_mt``                high
high_pct_ribo     ``pct_counts_ribo``              high
high_pct_hb       ``pct_counts_hb``                high
doublet           scrublet ``predicted_doublet``   flag
================  ===============================  =========

A cell fails a rule when its value lies more than ``k`` median absolute
deviations below (``low``) or above (``high``) the median. The MAD is scaled by
1.4826 as in R's ``mad`` and scater's ``isOutlier`` (the convention in which
"3 MADs" was proposed), so ``k`` reads as standard deviations. The learnt rules are
returned as :class:`QCThresholds`, which judges any other cells (for instance
generated ones) by the same rule.

Example
-------
>>> from cradle_pyro import simulate_screen, label_artifacts
>>> adata = simulate_screen(n_cells=400, n_genes=200, seed=0)
>>> thresholds = label_artifacts(adata, doublets=False)
>>> sorted(c for c in adata.obs.columns if c.startswith("qc_"))[:2]
['qc_high_pct_hb', 'qc_high_pct_mt']
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import CradleInputError
from .validation import check_counts, check_shape_and_names, in_memory

CRITERIA = (
    "low_total_counts",
    "low_n_genes",
    "high_pct_mt",
    "high_pct_ribo",
    "high_pct_hb",
    "doublet",
)

# criterion -> (scanpy metric, direction, log1p applied to a user column)
_PANEL_METRIC = {
    "low_total_counts": ("log1p_total_counts", "low", True),
    "low_n_genes": ("log1p_n_genes_by_counts", "low", True),
    "high_pct_mt": ("pct_counts_mt", "high", False),
    "high_pct_ribo": ("pct_counts_ribo", "high", False),
    "high_pct_hb": ("pct_counts_hb", "high", False),
}

QC_CHUNK_CELLS = 10_000  # cells per chunk of QC metrics
MAD_SCALE = 1.4826  # makes the MAD a consistent estimate of the normal standard deviation

GENE_GROUPS = {
    "mt": r"^(?:MT-|mt-)",
    "ribo": r"^(?:RPS|RPL|Rps|Rpl)",
    "hb": r"^(?:HB[^PES]|Hb[^pes])",
}

# Transcriptome-wide covariates that gene-panel screens ship in obs; preferred
# over panel sums when present (a panel's totals miss most of the library).
TRANSCRIPTOME_COLUMNS = {
    "low_total_counts": "total_counts_transcriptome",
    "low_n_genes": "n_genes_transcriptome",
    "high_pct_mt": "pct_counts_mt_transcriptome",
}

# var columns that commonly hold gene symbols when var names are Ensembl ids
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "symbol", "symbols", "gene_name",
                  "gene_names", "feature_name")
_ENSEMBL = r"^ENS[A-Z]*G\d{6,}"


@dataclass
class QCRule:
    """One outlier rule: ``value < median - k·MAD`` (low) or ``> median + k·MAD`` (high)."""

    criterion: str
    column: str
    direction: str
    log1p: bool
    median: float
    mad: float
    threshold: float
    active: bool = True
    note: str = ""
    source: str = "panel"  # "panel": computed from the counts; "obs": a user column

    def flag(self, values: np.ndarray) -> np.ndarray:
        """Boolean array: which values fail this rule."""
        if not self.active:
            return np.zeros(len(values), dtype=bool)
        v = np.log1p(values) if self.log1p else np.asarray(values, dtype=float)
        return v < self.threshold if self.direction == "low" else v > self.threshold


@dataclass
class QCThresholds:
    """Learnt QC rules; judges any cells by the same rule.

    ``rules`` holds the rule per criterion on the column used for labelling;
    ``panel_rules`` holds the same criterion learnt on the measured genes, used
    for cells that lack the labelling column (generated cells, for instance).
    """

    k: float
    rules: dict = field(default_factory=dict)
    panel_rules: dict = field(default_factory=dict)
    doublet_column: str | None = None
    artifact_kinds: str = "any"

    @property
    def kinds(self) -> list[str]:
        """Names of the artifact kinds this labelling produces."""
        active = [c for c in CRITERIA if self._is_active(c)]
        return ["artifact"] if self.artifact_kinds == "any" else active

    def _is_active(self, criterion: str) -> bool:
        if criterion == "doublet":
            return self.doublet_column is not None
        return criterion in self.rules and self.rules[criterion].active

    def judge(self, adata: ad.AnnData, layer: str | None = None,
              metrics: pd.DataFrame | None = None) -> pd.DataFrame:
        """Apply the rules to ``adata``; returns ``qc_<criterion>`` columns and ``artifact``.

        A criterion learnt on an obs column uses that column when ``adata`` has
        it, else the panel rule on metrics computed from the counts (or given as
        ``metrics``, :func:`qc_metrics` of the same cells). Doublets are judged
        only when the doublet column is present.
        """
        metrics = qc_metrics(adata, layer=layer) if metrics is None else metrics
        out = pd.DataFrame(index=adata.obs_names)
        for criterion in CRITERIA[:-1]:
            rule = self.rules.get(criterion)
            if rule is None:
                continue
            if rule.source == "obs" and rule.column in adata.obs:
                values = adata.obs[rule.column].to_numpy(dtype=float)
            else:
                rule = self.panel_rules[criterion]
                values = _raw_metric(metrics, rule.column)
            out[f"qc_{criterion}"] = rule.flag(values)
        if self.doublet_column is not None and self.doublet_column in adata.obs:
            out["qc_doublet"] = adata.obs[self.doublet_column].to_numpy(dtype=bool)
        flags = out[[c for c in out.columns if c.startswith("qc_")]]
        out["artifact"] = flags.any(axis=1).to_numpy()
        return out

    def artifact_matrix(self, labels: pd.DataFrame) -> np.ndarray:
        """Cells × artifact kinds 0/1 matrix from :meth:`judge`-style labels."""
        if self.artifact_kinds == "any":
            return labels[["artifact"]].to_numpy(dtype=np.float32)
        return labels[[f"qc_{k}" for k in self.kinds]].to_numpy(dtype=np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "QCThresholds":
        return cls(
            k=d["k"],
            rules={k: QCRule(**v) for k, v in d["rules"].items()},
            panel_rules={k: QCRule(**v) for k, v in d["panel_rules"].items()},
            doublet_column=d.get("doublet_column"),
            artifact_kinds=d.get("artifact_kinds", "any"),
        )

    def describe(self) -> pd.DataFrame:
        """A table of the rules: median and threshold in the column's own units
        (``*_raw``) and on the scale the MAD rule works on (log1p for counts)."""
        rows = []
        for c, r in self.rules.items():
            undo = np.expm1 if r.log1p else (lambda v: v)
            rows.append(
                dict(criterion=c, column=r.column, direction=r.direction,
                     median_raw=undo(r.median), threshold_raw=undo(r.threshold),
                     scale="log1p" if r.log1p else "raw", median=r.median, mad=r.mad,
                     threshold=r.threshold, active=r.active, note=r.note)
            )
        return pd.DataFrame(rows).set_index("criterion")


def _counts_matrix(adata: ad.AnnData, layer: str | None, load: bool = True):
    """The counts of ``adata``; ``load=False`` leaves an on-disk dataset on disk (row-sliceable)."""
    if layer is not None and layer not in adata.layers:
        raise CradleInputError(
            f"layer {layer!r} not found; available layers: {sorted(adata.layers)} "
            "(pass layer=None to use X)"
        )
    X = adata.X if layer is None else adata.layers[layer]
    return in_memory(X) if load or not hasattr(X, "to_memory") else X


def qc_metrics(adata: ad.AnnData, layer: str | None = None) -> pd.DataFrame:
    """scanpy QC metrics of ``adata``'s counts, without modifying ``adata``.

    Gene groups ``mt``, ``ribo`` and ``hb`` are recognised from gene symbols
    (human and mouse conventions): the var names, or, when those are Ensembl
    ids, a symbols column of var (:func:`gene_symbols`).
    """
    import scanpy as sc

    X = _counts_matrix(adata, layer, load=False)  # on-disk datasets are read chunk by chunk
    X = sp.csr_matrix(X) if not (sp.issparse(X) or hasattr(X, "to_memory")) else X
    symbols = pd.Index(gene_symbols(adata))
    var = pd.DataFrame(index=adata.var_names.astype(str))
    for group, pattern in GENE_GROUPS.items():
        var[group] = np.asarray(symbols.str.contains(pattern, regex=True), dtype=bool)
    names = adata.obs_names.astype(str)
    parts = []
    # per-cell metrics, so computed in chunks of cells: memory bounded by the chunk
    for start in range(0, X.shape[0], QC_CHUNK_CELLS):
        stop = min(start + QC_CHUNK_CELLS, X.shape[0])
        tmp = ad.AnnData(X=sp.csr_matrix(X[start:stop]), var=var,
                         obs=pd.DataFrame(index=names[start:stop]))
        obs_metrics, _ = sc.pp.calculate_qc_metrics(
            tmp, qc_vars=list(GENE_GROUPS), percent_top=None, log1p=True, inplace=False
        )
        parts.append(obs_metrics)
    return pd.concat(parts) if len(parts) > 1 else parts[0]


def gene_symbols(adata: ad.AnnData) -> np.ndarray:
    """Gene symbols for the mt / ribo / hb gene groups.

    The var names, unless most are Ensembl ids: then the first of
    :data:`SYMBOL_COLUMNS` found in var; without one, a warning says the
    mitochondrial, ribosomal and haemoglobin rules cannot find their genes.
    """
    names = pd.Index(adata.var_names.astype(str))
    if adata.n_vars == 0 or names.str.match(_ENSEMBL).mean() < 0.5:
        return names.to_numpy()
    for col in SYMBOL_COLUMNS:
        if col in adata.var:
            return adata.var[col].astype(str).to_numpy()
    warnings.warn(
        "var names are Ensembl ids and var has no gene-symbol column "
        f"(looked for {list(SYMBOL_COLUMNS)}): the mitochondrial, ribosomal and haemoglobin "
        "QC rules find no genes and stay inactive; add a symbols column to var to use them",
        UserWarning, stacklevel=3)
    return names.to_numpy()


def resolve_qc_columns(adata: ad.AnnData, columns: dict | None) -> dict:
    """The obs columns QC uses instead of panel metrics.

    ``None`` (the default) picks the transcriptome-wide covariates of
    :data:`TRANSCRIPTOME_COLUMNS` present in obs; a dict (``{}`` included)
    is used as given.
    """
    if columns is not None:
        return dict(columns)
    return {crit: col for crit, col in TRANSCRIPTOME_COLUMNS.items() if col in adata.obs}


def _raw_metric(metrics: pd.DataFrame, column: str) -> np.ndarray:
    """Values of a panel metric in raw units (log1p columns are undone)."""
    if column.startswith("log1p_"):
        return metrics[column[len("log1p_"):]].to_numpy(dtype=float)
    return metrics[column].to_numpy(dtype=float)


def _learn_rule(criterion, column, values, direction, log1p, k, source="panel") -> QCRule:
    v = np.log1p(values) if log1p else np.asarray(values, dtype=float)
    if np.isnan(v).any():
        raise CradleInputError(
            f"QC column {column!r} has {int(np.isnan(v).sum())} missing values; "
            "fill them or point the criterion at another column"
        )
    median = float(np.median(v))
    # scaled MAD (R's mad(), scater's isOutlier): k = 3 means about 3 standard deviations
    mad = MAD_SCALE * float(np.median(np.abs(v - median)))
    threshold = median - k * mad if direction == "low" else median + k * mad
    active, note = True, ""
    if mad == 0.0:
        # Half the cells share one value (a gene group absent from the panel,
        # for instance): any other value would be an "outlier", so the rule is off.
        active, note = False, "MAD is 0 (no spread); rule switched off"
    return QCRule(criterion, column, direction, log1p, median, mad, threshold, active, note, source)


def learn_thresholds(
    adata: ad.AnnData,
    k: float = 3.0,
    columns: dict | None = None,
    doublets: bool | str = True,
    artifact_kinds: str = "any",
    layer: str | None = None,
    seed: int = 0,
) -> tuple[QCThresholds, pd.DataFrame]:
    """Learn the QC rules on ``adata`` without modifying it.

    Returns the thresholds and the per-cell metrics used (including the
    scrublet columns when doublets were predicted here). ``columns=None``
    uses the transcriptome-wide obs columns present (:func:`resolve_qc_columns`);
    each rule's ``source`` and ``column`` say what was used.
    """
    columns = resolve_qc_columns(adata, columns)
    unknown = set(columns) - set(CRITERIA)
    if unknown:
        raise CradleInputError(
            f"unknown QC criteria {sorted(unknown)}; choose among {list(CRITERIA)}"
        )
    if artifact_kinds not in ("any", "per-criterion"):
        raise CradleInputError(
            f"artifact_kinds={artifact_kinds!r}; use 'any' (one kind) or 'per-criterion'"
        )
    for crit, col in columns.items():
        if col not in adata.obs:
            raise CradleInputError(
                f"QC column {col!r} for criterion {crit!r} is not in obs; "
                f"obs has {list(adata.obs.columns)}"
            )
    from tqdm.auto import tqdm

    # on a terminal, say where the minutes go (scrublet on 40,000 cells takes minutes)
    bar = tqdm(total=3 if doublets and "doublet" not in columns else 2, desc="QC",
               disable=None, leave=False)
    bar.set_postfix_str(f"metrics of {adata.n_obs} cells")
    metrics = qc_metrics(adata, layer=layer)
    bar.update()
    thresholds = QCThresholds(k=k, artifact_kinds=artifact_kinds)
    for criterion, (metric, direction, log1p_user) in _PANEL_METRIC.items():
        panel = _learn_rule(criterion, metric, _raw_metric(metrics, metric), direction,
                            metric.startswith("log1p_"), k)
        thresholds.panel_rules[criterion] = panel
        if criterion in columns:
            col = columns[criterion]
            thresholds.rules[criterion] = _learn_rule(
                criterion, col, adata.obs[col].to_numpy(dtype=float), direction, log1p_user, k,
                source="obs",
            )
        else:
            thresholds.rules[criterion] = panel
    if "doublet" in columns:
        thresholds.doublet_column = columns["doublet"]
        metrics["predicted_doublet"] = adata.obs[columns["doublet"]].to_numpy(dtype=bool)
    elif doublets:
        bar.update()
        bar.set_postfix_str("scrublet doublet scores")
        metrics = metrics.join(predict_doublets(adata, layer=layer, seed=seed))
        thresholds.doublet_column = "predicted_doublet"
    bar.update()
    bar.close()
    return thresholds, metrics


def predict_doublets(adata: ad.AnnData, layer: str | None = None, seed: int = 0) -> pd.DataFrame:
    """scanpy's scrublet on a copy; returns ``doublet_score`` and ``predicted_doublet``.

    scrublet keeps only the highly variable genes before its PCA, so on a gene
    panel (Norman: 250 expressed genes, 17 variable) its default 30 components
    do not exist. The number of components is fitted to the genes scrublet will
    keep; with fewer than :data:`MIN_SCRUBLET_GENES` variable genes doublet
    detection is skipped with a warning (no cell is called a doublet, the score
    is NaN) instead of failing.
    """
    import scanpy as sc

    X = _counts_matrix(adata, layer)
    tmp = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32),
                     obs=pd.DataFrame(index=adata.obs_names.astype(str)))
    n_genes_expressed = int((np.asarray((tmp.X > 0).sum(axis=0)).ravel() >= 3).sum())
    if n_genes_expressed < 50 or tmp.n_obs < 100:
        raise CradleInputError(
            f"scrublet needs at least 100 cells and 50 genes seen in 3 cells "
            f"(have {tmp.n_obs} cells, {n_genes_expressed} genes); pass doublets=False"
        )
    n_variable = _scrublet_gene_count(tmp)
    if n_variable < MIN_SCRUBLET_GENES:
        warnings.warn(
            f"doublet detection skipped: scrublet would keep {n_variable} highly variable genes "
            f"(< {MIN_SCRUBLET_GENES}) of this {adata.n_vars}-gene panel; no cell is flagged as a "
            "doublet. Pass a doublet column (columns={'doublet': ...}) or doublets=False to "
            "silence this.", UserWarning, stacklevel=2)
        return pd.DataFrame({"doublet_score": np.nan, "predicted_doublet": False},
                            index=tmp.obs_names)
    n_pcs = int(min(30, n_variable - 1, tmp.n_obs - 1))
    with warnings.catch_warnings(), _torch_threads_kept():
        warnings.simplefilter("ignore")
        # exact neighbours: the approximate path breaks on scipy sparse arrays
        sc.pp.scrublet(tmp, random_state=seed, n_prin_comps=n_pcs, use_approx_neighbors=False,
                       verbose=False)
    return tmp.obs[["doublet_score", "predicted_doublet"]].astype(
        {"doublet_score": float, "predicted_doublet": bool}
    )


MIN_SCRUBLET_GENES = 10


def _scrublet_gene_count(tmp: ad.AnnData) -> int:
    """How many genes scrublet's own filtering (min 3 cells, HVG on log1p) keeps."""
    import scanpy as sc

    probe = tmp.copy()
    with warnings.catch_warnings(), _torch_threads_kept():
        warnings.simplefilter("ignore")
        sc.pp.filter_genes(probe, min_cells=3)
        sc.pp.filter_cells(probe, min_genes=3)
        sc.pp.normalize_total(probe)
        sc.pp.log1p(probe)
        sc.pp.highly_variable_genes(probe)
    return int(probe.var["highly_variable"].sum())


class _torch_threads_kept:
    """Restore torch's thread count after third-party code that changes it."""

    def __enter__(self):
        import torch

        self._threads = torch.get_num_threads()

    def __exit__(self, *exc):
        import torch

        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)


def label_artifacts(
    adata: ad.AnnData,
    k: float = 3.0,
    columns: dict | None = None,
    doublets: bool = True,
    artifact_kinds: str = "any",
    layer: str | None = None,
    seed: int = 0,
    inplace: bool = True,
) -> QCThresholds | tuple[QCThresholds, pd.DataFrame]:
    """Label artifact cells by the six QC criteria.

    Parameters
    ----------
    adata
        Cells × genes with raw counts in ``X`` or ``layer``.
    k
        Number of median absolute deviations beyond which a cell is an outlier.
    columns
        Criterion → obs column to use instead of the panel metric, e.g.
        ``{"low_total_counts": "total_counts_transcriptome"}``; for
        ``"doublet"`` a boolean column of predicted doublets. ``None``
        (default): the transcriptome-wide columns of
        :data:`TRANSCRIPTOME_COLUMNS` found in obs; ``{}``: panel metrics only.
    doublets
        Run scanpy's scrublet; on panels too small for it, skipped with a
        warning (see :func:`predict_doublets`).
    artifact_kinds
        ``"any"``: one kind, ``artifact``, failed if any criterion fails;
        ``"per-criterion"``: one kind per active criterion.
    inplace
        Write the metrics, ``qc_<criterion>`` and ``artifact`` into ``adata.obs``
        and return the thresholds; else return ``(thresholds, obs_table)``.

    Examples
    --------
    >>> from cradle_pyro import simulate_screen
    >>> adata = simulate_screen(n_cells=400, n_genes=200, seed=0)
    >>> t = label_artifacts(adata, doublets=False)
    >>> bool(adata.obs["artifact"].any())
    True
    """
    check_shape_and_names(adata)
    check_counts(_counts_matrix(adata, layer, load=False), "error")
    thresholds, metrics = learn_thresholds(adata, k, columns, doublets, artifact_kinds, layer, seed)
    # the metrics were just computed: judge by them instead of a second pass over the counts
    labels = thresholds.judge(_with_obs(adata, metrics), layer=layer, metrics=metrics)
    table = metrics.join(labels)
    if not inplace:
        return thresholds, table
    for col in table.columns:
        adata.obs[col] = table[col].to_numpy()
    adata.uns["cradle_qc"] = thresholds.to_dict()
    return thresholds


def _with_obs(adata: ad.AnnData, extra: pd.DataFrame) -> ad.AnnData:
    """A view-like AnnData sharing X and layers, with extra obs columns (no copy of counts)."""
    obs = adata.obs.copy()
    for col in extra.columns:
        if col not in obs:
            obs[col] = extra[col].to_numpy()
    return ad.AnnData(X=adata.X, obs=obs, var=adata.var[[]].copy(), layers=dict(adata.layers))


# QC metrics a latent artifact state explains (ModelConfig(artifact_state="latent")):
# covariate name -> scanpy metric; shares enter on the logit scale, counts on log1p.
COVARIATE_METRICS = {
    "log_total_counts": "log1p_total_counts",
    "log_n_genes": "log1p_n_genes_by_counts",
    "logit_pct_mt": "pct_counts_mt",
    "logit_pct_ribo": "pct_counts_ribo",
    "doublet_score": "doublet_score",
}


def artifact_covariates(metrics: pd.DataFrame, obs: pd.DataFrame | None = None,
                        thresholds: QCThresholds | None = None) -> pd.DataFrame:
    """The QC covariates that the latent artifact state explains, one column each.

    Library size and detected genes (log1p), mitochondrial and ribosomal
    shares (logit), and scrublet's doublet score when it ran. Where a QC rule
    was learnt on an obs column (a screen's transcriptome-wide totals), that
    column replaces the panel metric. Columns without spread (no
    mitochondrial genes measured, say) are left out.

    Example
    -------
    >>> from cradle_pyro import simulate_screen
    >>> adata = simulate_screen(n_cells=200, n_genes=100, seed=0)
    >>> list(artifact_covariates(qc_metrics(adata)).columns)[:2]
    ['log_total_counts', 'log_n_genes']
    """
    rule_of = {"log_total_counts": "low_total_counts", "log_n_genes": "low_n_genes",
               "logit_pct_mt": "high_pct_mt", "logit_pct_ribo": "high_pct_ribo"}
    out = {}
    for name, metric in COVARIATE_METRICS.items():
        values = metrics[metric].to_numpy(dtype=float) if metric in metrics else None
        rule = thresholds.rules.get(rule_of.get(name, "")) if thresholds is not None else None
        if rule is not None and rule.source != "panel" and obs is not None and rule.column in obs:
            values = obs[rule.column].to_numpy(dtype=float)
            values = np.log1p(values) if rule.log1p else values
        if values is None:
            continue
        if name.startswith("logit_"):
            share = np.clip(values / 100.0, 1e-3, 1 - 1e-3)
            values = np.log(share) - np.log1p(-share)
        if np.isfinite(values).all() and np.nanstd(values) > 1e-8:
            out[name] = values
    return pd.DataFrame(out, index=metrics.index)


def robust_scale(reference: np.ndarray):
    """Per column: the median and 1.4826·MAD of ``reference`` (MAD 0: its sd, or 1).

    Robust, so the artifacts a latent artifact state models do not set the scale.
    """
    if reference.shape[1] == 0:
        return np.zeros(0), np.ones(0)
    med = np.median(reference, 0)
    mad = MAD_SCALE * np.median(np.abs(reference - med), 0)
    sd = reference.std(0)
    return med, np.where(mad > 1e-8, mad, np.where(sd > 1e-8, sd, 1.0))
