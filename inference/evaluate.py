"""The evaluation report: metrics JSON, a Markdown report and figures.

:func:`evaluate` scores one or more trained runs on the held-out cells of a
split: ATE Pearson r and R² (all genes and top-20 DE), Jaccard of top-20 gene
sets, QC pass rate of generated clean cells (judged by the thresholds learnt on
the training data), energy distance to real cells in PCA space, held-out
IWELBO; and the additive baseline beside the models on combinations.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from inference import TrainConfig, fit
>>> import tempfile
>>> data = PerturbationData.from_anndata(simulate_screen(400, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> report = evaluate({"cradle": run}, data, tempfile.mkdtemp(), n_cells=100, progress=False)
>>> "cradle" in report["models"] and "additive" in report["models"]
True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot's global state or backend
from tqdm.auto import tqdm

from cradle_pyro.qc import qc_metrics

from .effects import additive_ate, data_ate, model_ate, sample_cells
from .metrics import ate_metrics, pca_energy_distance, qc_pass_rate
from .objective import iwelbo

METRIC_COLUMNS = ["pearson_all", "r2_all", "pearson_top", "r2_top", "jaccard_top"]


def heldout_perturbations(data, split="test"):
    """Conditions with cells in ``split`` (control excluded)."""
    conds = np.asarray(data.conditions)
    return [c for c in data.condition_names
            if c != data.control_label and ((data.split == split) & (conds == c)).any()]


def _summary(table: pd.DataFrame) -> dict:
    return {k: float(np.nanmean(table[k])) for k in METRIC_COLUMNS}


def evaluate(runs: dict, data, out_dir, *, split: str = "test", n_cells: int = 1000,
             n_generated: int = 200, top_k: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Evaluate trained runs on ``split``; writes ``metrics.json``, ``report.md`` and figures.

    Parameters
    ----------
    runs
        Name → :class:`~inference.train.TrainedRun` (or an object with
        ``model``, ``guide`` and ``history``).
    data
        The :class:`~cradle_pyro.data.PerturbationData` the runs were trained on.
    n_cells
        Generated cells per condition for model ATEs.
    n_generated
        Generated clean cells per condition for QC pass rate and energy distance.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    perts = heldout_perturbations(data, split)
    observed = data_ate(data, perts, split=split)
    report = {"split": split, "perturbations": perts, "n_cells_per_condition": n_cells,
              "top_k": top_k, "models": {}}
    tables, ates = {}, {}
    combos = [p for p in perts if data.separator in p]
    if combos:
        ates["additive"] = additive_ate(data, combos)
        tables["additive"] = ate_metrics(ates["additive"], observed.loc[combos], top_k)
        report["models"]["additive"] = {"ate": _summary(tables["additive"]),
                                        "note": "sum of the singles' training-data ATEs"}
    for name, run in tqdm(runs.items(), desc="evaluate", disable=not progress):
        ate = model_ate(run.model, run.guide, data, perts, n_cells=n_cells, seed=seed)
        ates[name], tables[name] = ate, ate_metrics(ate, observed, top_k)
        entry = {"ate": _summary(tables[name])}
        if combos:
            entry["ate_combinations"] = _summary(tables[name].loc[combos])
        generated, energy = [], []
        for p in perts[:8]:
            cells = sample_cells(run.model, run.guide, data, p, n=n_generated, artifact="clean", seed=seed)
            generated.append(cells)
            real = _real_clean(data, p, split)
            if len(real) > 2:
                energy.append(pca_energy_distance(cells.X.toarray(), real, seed=seed))
        if data.qc_thresholds is not None:
            entry["qc_pass_rate_generated_clean"] = float(np.mean(
                [qc_pass_rate(data.qc_thresholds, g) for g in generated]))
        entry["energy_distance_pca"] = float(np.mean(energy)) if energy else None
        entry["iwelbo_mean"] = float(np.mean(iwelbo(run.model, run.guide, data, split=split,
                                                     num_particles=20)))
        entry["per_perturbation"] = tables[name].round(4).reset_index().to_dict(orient="records")
        report["models"][name] = entry
        _qc_figure(generated, data, split, perts[:8], out / "figures" / f"qc_{_safe(name)}.png")
    _scatter_figure(ates, observed, out / "figures" / "ate_scatter.png")
    _loss_figure(runs, out / "figures" / "loss_curves.png")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown_report(report))
    return report


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def _real_clean(data, condition, split):
    conds = np.asarray(data.conditions)
    keep = (conds == condition) & (data.split == split)
    if data.n_artifacts:
        keep &= data.artifact.sum(1) == 0
    return data.counts[np.flatnonzero(keep)].toarray()


def _scatter_figure(ates, observed, path, max_panels=12):
    perts = list(observed.index)[:max_panels]
    cols = min(4, len(perts))
    rows = int(np.ceil(len(perts) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, p in zip(axes.ravel(), perts):
        o = observed.loc[p].to_numpy()
        for name, ate in ates.items():
            if p in ate.index:
                ax.scatter(o, ate.loc[p].to_numpy(), s=5, alpha=0.6, label=name)
        lim = np.abs(o).max() * 1.1 + 1e-6
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("observed ATE")
        ax.set_ylabel("predicted ATE")
    for ax in axes.ravel()[len(perts):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _loss_figure(runs, path):
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots(1, 2)
    for name, run in runs.items():
        h = getattr(run, "history", None)
        if h is None or len(h) == 0:
            continue
        ax[0].plot(h["epoch"], h["loss"], label=f"{name} train")
        ax[0].plot(h["epoch"], h["val_loss"], ls="--", label=f"{name} val")
        ax[1].plot(h["epoch"], h["alignment"], label=name)
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss per cell")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("alignment KL per cell")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _qc_figure(generated, data, split, perts, path):
    import anndata as ad

    gen = ad.concat(generated) if generated else None
    conds = np.asarray(data.conditions)
    real_idx = np.flatnonzero(np.isin(conds, perts) & (data.split == split))
    real = ad.AnnData(X=data.counts[real_idx], var=pd.DataFrame(index=data.gene_names))
    m_real, m_gen = qc_metrics(real), qc_metrics(gen)
    cols = ["log1p_total_counts", "log1p_n_genes_by_counts", "pct_counts_mt"]
    fig = Figure(figsize=(10, 3))
    axes = fig.subplots(1, 3)
    for ax, c in zip(axes, cols):
        bins = np.histogram_bin_edges(np.concatenate([m_real[c], m_gen[c]]), 30)
        ax.hist(m_real[c], bins=bins, alpha=0.5, density=True, label="real (all)")
        ax.hist(m_gen[c], bins=bins, alpha=0.5, density=True, label="generated clean")
        ax.set_xlabel(c)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_report(report: dict) -> str:
    """A readable Markdown summary of :func:`evaluate`'s metrics."""
    lines = [f"# cradle-pyro evaluation ({report['split']} split)", "",
             f"Held-out perturbations: {', '.join(report['perturbations'])}", "",
             "| model | ATE r (all) | ATE R² (all) | ATE r (top-%d) | Jaccard top-%d | r on combinations | QC pass (generated clean) | energy dist. (PCA) | IWELBO |"
             % (report["top_k"], report["top_k"]),
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.3f}"

    for name, m in report["models"].items():
        a = m["ate"]
        combo = m.get("ate_combinations", a if name == "additive" else None)
        lines.append(f"| {name} | {f(a['pearson_all'])} | {f(a['r2_all'])} | {f(a['pearson_top'])} | "
                     f"{f(a['jaccard_top'])} | {f(combo['pearson_all']) if combo else '—'} | "
                     f"{f(m.get('qc_pass_rate_generated_clean'))} | {f(m.get('energy_distance_pca'))} | "
                     f"{f(m.get('iwelbo_mean'))} |")
    lines += ["", "The additive baseline predicts a combination as the sum of its singles' ATEs "
              "measured on training cells; it is only defined for combinations.", "",
              "![ATE scatter](figures/ate_scatter.png)", "", "![loss](figures/loss_curves.png)", ""]
    for name in report["models"]:
        if name != "additive":
            lines.append(f"![QC of generated cells, {name}](figures/qc_{_safe(name)}.png)")
    return "\n".join(lines) + "\n"
