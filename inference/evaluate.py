"""The evaluation report: metrics JSON, a Markdown report and figures.

:func:`evaluate` scores one or more trained runs on the held-out conditions of
a split, the way :mod:`cradle_pyro.inference.scoring` describes, on equal terms: the
truth from held-out clean cells only (held-out conditions minus held-out control
cells), the baselines (additive, mean of perturbed cells, no change, linear) from
training cells only, as the models are, the truth's split-half noise ceiling
beside every score, per-condition scores, and how far each
combination is from the sum of its singles (data and model). Model ATEs are
posterior means over many draws of the globals (:func:`~cradle_pyro.inference.effects.posterior_ate`).
Beside the effects: QC pass rate of generated clean cells (judged by the
thresholds learnt on the training data), energy distance to real cells in PCA
space, held-out IWELBO.

Example
-------
>>> from cradle_pyro import simulate_screen, PerturbationData
>>> from cradle_pyro.inference import TrainConfig, fit
>>> import tempfile
>>> data = PerturbationData.from_anndata(simulate_screen(400, 80, seed=0), doublets=False,
...                                      split="unseen-combinations", heldout_fraction=0.5)
>>> run = fit(data, TrainConfig(epochs=1, progress=False))
>>> report = evaluate({"cradle": run}, data, tempfile.mkdtemp(), num_draws=10, n_cells=20,
...                   n_splits=3, progress=False)
>>> sorted(report["summary"])
['additive', 'ceiling', 'cradle', 'linear', 'mean', 'no_change']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot's global state or backend

from cradle_pyro.progress import Progress
from cradle_pyro.qc import qc_metrics
from cradle_pyro.splits import targets_of

from .counterfactuals import cleaning_against_twins, counterfactual
from .effects import N_CELLS, NUM_DRAWS, perturbseq_normalise, sample_cells
from .ensembles import ensemble_ate
from .artifacts import (artifact_figure, artifact_posterior, artifact_summary,
                        describe_artifact_summary)
from .embeddings import cells_with_latents, umap_figure
from .metrics import pca_energy_distance, qc_pass_rate
from .objective import iwelbo
from .outputs import save_figure, write_csv, write_text
from .scoring import (SCORE_COLUMNS, clean_cells, held_out_conditions, interactions, score_ates,
                      summarise_scores)

heldout_perturbations = held_out_conditions  # the name earlier releases used


def evaluate(runs: dict, data, out_dir, *, split: str = "test", num_draws: int = NUM_DRAWS,
             n_cells: int = N_CELLS, n_generated: int = 200, n_splits: int = 20, top_k: int = 20,
             seed: int = 0, progress: bool = True, basal: str = "abducted", twins=None) -> dict:
    """Evaluate trained runs on ``split``; writes ``metrics.json``, ``report.md``, CSVs and figures.

    Parameters
    ----------
    runs
        Name → :class:`~cradle_pyro.inference.train.TrainedRun` (or an object with
        ``model``, ``guide`` and ``history``), or name → a list of runs, the
        members of an ensemble (:mod:`cradle_pyro.inference.ensembles`): its ATEs mix the
        members' posteriors; generation checks and loss curves use the first.
    data
        The :class:`~cradle_pyro.data.PerturbationData` the runs were trained on.
    num_draws, n_cells, basal
        Posterior draws, cells per draw and where their basal states come from
        (:func:`~cradle_pyro.inference.effects.posterior_ate`) for model ATEs;
        ``basal`` may map run names to sources (a run not named: ``"abducted"``),
        e.g. ``{"cradle-paper": "prior"}``, the published recipe.
    n_generated
        Generated clean cells per condition for QC pass rate and energy distance.
    n_splits
        Random halvings of the held-out cells the noise ceiling is averaged over.
    twins
        A simulated AnnData whose cells keep their clean twins
        (``layers["clean_expected"]``): each model whose artifact state reaches
        the decoder then cleans every cell, and the report gives, per group, how
        far cleaning brought the cells to their twins
        (:func:`~cradle_pyro.inference.counterfactuals.cleaning_against_twins`).

    Returns
    -------
    dict
        The content of ``metrics.json``: ``summary`` (predictor → mean scores
        over held-out conditions, ``ceiling`` included), ``per_perturbation``
        (long table as records), ``interactions`` and per-model extras.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    perts = held_out_conditions(data, split)
    combos = [p for p in perts if data.separator in p]
    singles = sorted({t for p in combos for t in targets_of(p, data.control_label, data.separator)})
    report = {"split": split, "perturbations": perts, "num_draws": num_draws,
              "n_cells_per_draw": n_cells, "basal": basal, "n_control_splits": n_splits,
              "top_k": top_k,
              "models": {}}
    members = {name: list(r) if isinstance(r, (list, tuple)) else [r] for name, r in runs.items()}
    runs = {name: m[0] for name, m in members.items()}
    posteriors, extras = {}, {}
    bar = Progress(len(runs), "evaluate", enabled=progress, every=1 / max(len(runs), 1))
    for name, run in runs.items():
        wanted = perts + [t for t in singles if t not in perts]
        posteriors[name] = ensemble_ate(members[name], data, wanted, num_draws=num_draws,
                                        n_cells=n_cells, seed=seed, basal=_basal_of(basal, name))
        extras[name] = _generation_checks(run, data, perts, split, n_generated, seed, twins,
                                          out / "figures" / f"qc_{_safe(name)}.png")
        extras[name]["members"] = len(members[name])
        bar.update(model=name)
    bar.close()
    means = {name: post.mean for name, post in posteriors.items()}
    table = score_ates(means, data, perts, split=split, n_splits=n_splits, top_k=top_k,
                       seed=seed)
    summary = summarise_scores(table)
    inter = interactions(means, data, combos, split=split) if combos else pd.DataFrame()
    report["n_control_heldout"] = int(table["n_control"].iloc[0]) if len(table) else 0
    report["summary"] = {k: {c: _float(v) for c, v in row.items()}
                         for k, row in summary.iterrows()}
    report["per_perturbation"] = table.round(4).to_dict(orient="records")
    report["interactions"] = inter.round(4).to_dict(orient="records")
    report["models"] = extras
    write_csv(table, out / "scores.csv", index=False)
    for name, post in posteriors.items():
        write_csv(post.to_long(), out / f"ate_{_safe(name)}.csv", index=False)
    _scatter_figure(posteriors, data, perts, split, out / "figures" / "ate_scatter.png")
    _loss_figure(runs, out / "figures" / "loss_curves.png")
    write_text(out / "metrics.json", json.dumps(report, indent=2, default=_json_default))
    write_text(out / "report.md", markdown_report(report))
    return report


def _generation_checks(run, data, perts, split, n_generated, seed, twins, figure_path) -> dict:
    """QC pass rate and energy distance of generated clean cells (and their QC
    figure); held-out IWELBO."""
    generated, energy = [], []
    for p in perts[:8]:
        cells = sample_cells(run.model, run.guide, data, p, n=n_generated, artifact="clean", seed=seed)
        generated.append(cells)
        real = data.counts[clean_cells(data, p, split=split)].toarray()
        if len(real) > 2:
            energy.append(pca_energy_distance(cells.X.toarray(), real, seed=seed))
    entry = {}
    if data.qc_thresholds is not None and generated:
        entry["qc_pass_rate_generated_clean"] = float(np.mean(
            [qc_pass_rate(data.qc_thresholds, g) for g in generated]))
    entry["energy_distance_pca"] = float(np.mean(energy)) if energy else None
    entry["iwelbo_mean"] = float(np.mean(iwelbo(run.model, run.guide, data, split=split,
                                                 num_particles=20)))
    if generated:
        _qc_figure(generated, data, split, perts[:8], figure_path)
    umap_path = figure_path.with_name(figure_path.name.replace("qc_", "umap_"))
    umap_figure(cells_with_latents(run.model, run.guide, data, seed=seed), umap_path)
    if run.model.config.latent_artifacts:
        post = artifact_posterior(run.model, run.guide, data)
        entry["artifact_posterior"] = artifact_summary(post)
        artifact_figure(post, data, figure_path.with_name(
            figure_path.name.replace("qc_", "artifacts_")))
    if twins is not None and run.model.config.artifact_to_decoder:
        cf = counterfactual(run.model, run.guide, data, artifact="clean", num_samples=4, seed=seed)
        entry["twin_cleaning"] = cleaning_against_twins(cf, twins).to_dict(orient="index")
    return entry


def _describe_basal(basal) -> str:
    if isinstance(basal, dict):
        return "; ".join(f"{name}: {b}" for name, b in basal.items()) + "; others: abducted"
    return basal


def _basal_of(basal, name) -> str:
    return basal.get(name, "abducted") if isinstance(basal, dict) else basal


def _float(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def _scatter_figure(posteriors, data, perts, split, path, max_panels=12):
    """Predicted vs observed (clean truth) ATE per condition, with 90 % intervals."""
    perts = list(perts)[:max_panels]
    if not perts:
        return
    control = perturbseq_normalise(
        data.counts[clean_cells(data, data.control_label, split=split)]).mean(0)
    cols = min(4, len(perts))
    rows = int(np.ceil(len(perts) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, p in zip(axes.ravel(), perts):
        o = perturbseq_normalise(data.counts[clean_cells(data, p, split=split)]).mean(0) - control
        for name, post in posteriors.items():
            m, lo, up = (post.mean.loc[p].to_numpy(), post.lower.loc[p].to_numpy(),
                         post.upper.loc[p].to_numpy())
            # the posterior mean can sit outside a quantile interval of skewed draws
            yerr = [np.clip(m - lo, 0, None), np.clip(up - m, 0, None)]
            ax.errorbar(o, m, yerr=yerr, fmt="o", ms=2, lw=0.4, alpha=0.6, label=name)
        lim = np.abs(o).max() * 1.1 + 1e-6
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("observed ATE (held-out clean cells)")
        ax.set_ylabel("model ATE, 90 % interval")
    for ax in axes.ravel()[len(perts):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


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
    save_figure(fig, path, dpi=110)


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
    save_figure(fig, path, dpi=110)


def markdown_report(report: dict) -> str:
    """A readable Markdown summary of :func:`evaluate`'s metrics."""
    k = report["top_k"]
    lines = [f"# cradle-pyro evaluation ({report['split']} split)", "",
             f"Held-out conditions: {', '.join(report['perturbations'])}", "",
             "Scores are means over held-out conditions, on equal terms: the truth is each "
             "condition's held-out clean cells minus the "
             f"{report.get('n_control_heldout', '?')} held-out clean control cells, cells no "
             "predictor trained on; models and baselines (`additive`: sum of the singles' "
             "training effects; `mean`: all perturbed training cells; `no_change`: zero; "
             "`linear`: ridge on the training conditions' effects) are built from training cells "
             "only. `ceiling` is the truth's split-half reliability (Spearman-Brown corrected, "
             f"{report['n_control_splits']} halvings); a perfect predictor's expected r is about "
             "its square root. Model ATEs: posterior means over "
             f"{report['num_draws']} draws × {report['n_cells_per_draw']} cells "
             f"({_describe_basal(report.get('basal', 'prior'))} basal states)"
             + "".join(f"; {name}: an ensemble of {m['members']} runs, their posteriors mixed"
                       for name, m in report["models"].items() if m.get("members", 1) > 1)
             + ".", "",
             f"| predictor | r (all genes) | r (top-{k}) | R² (all) | R² (top-{k}) | Jaccard top-{k} "
             f"| slope (top-{k}) |", "|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    for name, m in report["summary"].items():
        lines.append("| " + " | ".join([name] + [f(m.get(c)) for c in SCORE_COLUMNS]) + " |")
    if report.get("interactions"):
        lines += ["", "Distance of each combination from the sum of its singles (L2 over genes; "
                  "`_r`: correlation of the model's interaction with the data's):", "",
                  "| " + " | ".join(report["interactions"][0]) + " |",
                  "|" + "---|" * len(report["interactions"][0])]
        for row in report["interactions"]:
            lines.append("| " + " | ".join(v if isinstance(v, str) else f(v) for v in row.values()) + " |")
    lines += ["", "| model | QC pass (generated clean) | energy dist. (PCA) | IWELBO |",
              "|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {f(m.get('qc_pass_rate_generated_clean'))} | "
                     f"{f(m.get('energy_distance_pca'))} | {f(m.get('iwelbo_mean'))} |")
    lines += ["", "![ATE scatter](figures/ate_scatter.png)", "", "![loss](figures/loss_curves.png)", ""]
    for name, m in report["models"].items():
        if "artifact_posterior" in m:
            a = m["artifact_posterior"]
            lines += ["", f"Latent artifact state ({name}): {describe_artifact_summary(a)}.", "",
                      f"![artifact posterior, {name}](figures/artifacts_{_safe(name)}.png)", ""]
        if "twin_cleaning" in m:
            lines += ["", f"Cleaning against the simulator's clean twins ({name}; distance in "
                      "log1p(CP10k) to the twin's expected profile after and before "
                      "`do(artifact=clean)`; ratio below 1: brought closer, 1: left alone):", "",
                      "| group | cells | after | before | ratio |", "|---|---|---|---|---|"]
            lines += [f"| {g} | {r['n']} | {f(r['cf_mse'])} | {f(r['factual_mse'])} | "
                      f"{f(r['ratio'])} |" for g, r in m["twin_cleaning"].items()]
            lines.append("")
    for name in report["models"]:
        lines.append(f"![QC of generated cells, {name}](figures/qc_{_safe(name)}.png)")
        lines.append(f"![UMAPs of the basal state and the full latent, {name}]"
                     f"(figures/umap_{_safe(name)}.png)")
    return "\n".join(lines) + "\n"
