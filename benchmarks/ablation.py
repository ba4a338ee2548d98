"""From the published model to today's ``cradle``, one extension at a time, on equal terms.

Steps (each adds one change to the step before it):

1. ``cradle-paper``: the published CRADLE-VAE (:mod:`cradle_pyro.inference.presets`),
   ATEs over prior cells as published;
2. ``+residual encoder``: the basal state is the encoder's output minus the offsets;
3. ``+gene effects``: direct, sparse per-gene effects;
4. ``+target effects``: a direct effect on the perturbation's own target gene;
5. ``+library mediator``: perturbations move the library size;
6. ``+independence``: the basal-leakage penalty, λ = 3;
7. ``cradle``: today's defaults in full, which also changes the training (sizes 10/128,
   AdamW 5·10⁻³, batch 128, per-cell alignment at β = 1, no class weights, mask
   temperature 0.5, 200 epochs, the last state kept) and the ATE recipe (the
   screen's own cells, abducted basal states).

``--direction remove`` runs the reverse question, what each extension carries under
today's training: ``cradle``, then ``cradle`` with one extension taken out at a time
(``-residual encoder`` ... ``-independence``), and ``-all extensions`` (the published
sites and objective terms, today's training and ATE recipe). Its results go to
``ablation_<screen>_remove.json``.

Each screen holds out its doubles (Norman: all five eligible; simulated: a
third of the eligible) and half the control cells; every predictor, the
baselines of :mod:`cradle_pyro.inference.baselines` included, is built from the
other cells, and the truth from the held-out cells only
(:func:`cradle_pyro.inference.scoring.score_ates`), the split-half ceiling
beside. On simulated screens the true ATE is known too: ``truth_r_*`` is each
predictor's r with it on the held-out doubles.

This is a test-split scorer: it is run once a change is decided, never to
choose a setting (``cross_validation.py`` and the simulator do that).

Screens: ``norman`` (``../shared/data``), ``simulator`` (3,000 × 500) and
``crispri`` (the same with each single knocking its target down, log-fold −2).
``--max-epochs`` caps the published early-stopped training (2,000 epochs,
patience 50) to fit a CPU budget; the cap is written into the result.

    python benchmarks/ablation.py --screen norman --seeds 0,1,2
    python benchmarks/ablation.py --screen simulator --seeds 0,1,2 --steps cradle-paper,cradle
    python benchmarks/ablation.py --screen norman --seeds 0,1,2 --direction remove
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cradle_pyro import ModelConfig, PerturbationData, simulate_screen
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.baselines import baseline_ates
from cradle_pyro.inference.effects import posterior_ate
from cradle_pyro.inference.presets import PRESETS, preset
from cradle_pyro.inference.scoring import held_out_conditions, score_ates, summarise_scores

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
RESULTS = ROOT / "benchmarks" / "results"
STEPS = [("cradle-paper", {}), ("+residual encoder", {"residual_encoder": True}),
         ("+gene effects", {"gene_effects": True}), ("+target effects", {"target_effects": True}),
         ("+library mediator", {"library_effects": True}), ("+independence", {"independence": 3.0}),
         ("cradle", None)]
EXTENSIONS_OFF = {"-residual encoder": {"residual_encoder": False},
                  "-gene effects": {"gene_effects": False},
                  "-target effects": {"target_effects": False},
                  "-library mediator": {"library_effects": False},
                  "-independence": {"independence": 0.0}}
REMOVALS = [("cradle", {}), *EXTENSIONS_OFF.items(),
            ("-all extensions", {k: v for c in EXTENSIONS_OFF.values() for k, v in c.items()})]
SIMULATED = {"simulator": {}, "crispri": {"knockdown": -2.0}}
COLUMNS = ["pearson_all", "pearson_top", "r2_top"]


def screen_data(screen, seed):
    """The AnnData, the split data and (simulated screens) the true ATE table."""
    if screen == "norman":
        adata = ad.read_h5ad(NORMAN)
        data = PerturbationData.from_anndata(adata, split="unseen-combinations",
                                             heldout_fraction=1.0, seed=seed)
        return data, None
    adata = simulate_screen(n_cells=3000, n_genes=500, n_truth_cells=1000, seed=seed,
                            **SIMULATED[screen])
    data = PerturbationData.from_anndata(adata, doublets=False, split="unseen-combinations",
                                         heldout_fraction=0.34, seed=seed)
    t = adata.uns["truth"]
    truth = pd.DataFrame(np.asarray(t["ate"]), index=list(t["ate_conditions"]),
                         columns=data.gene_names)
    return data, truth


def step_configs(upto: int, seed: int, max_epochs: int):
    """Model and train configs of step ``upto`` (0-based), and its ATE basal source."""
    if STEPS[upto][1] is None:
        return ModelConfig(), TrainConfig(seed=seed, progress=False), "abducted"
    changes = {}
    for _, change in STEPS[1: upto + 1]:
        changes.update(change)
    mc, tc = preset("cradle-paper", seed=seed, progress=False, epochs=max_epochs, **changes)
    return mc, tc, PRESETS["cradle-paper"]["effects"]["basal"]


def removal_configs(name: str, seed: int):
    """Today's ``cradle`` with the extensions of removal ``name`` taken out."""
    changes = dict(REMOVALS)[name]
    train = {k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}
    model = {k: v for k, v in changes.items() if k not in train}
    return (ModelConfig(**model), TrainConfig(seed=seed, progress=False, **train), "abducted")


def truth_r(table, truth, conditions) -> dict:
    """r (all genes, top-20 of the true ATE) with the known truth, mean over conditions."""
    r_all, r_top = [], []
    for c in conditions:
        if c not in table.index:
            continue
        p, t = table.loc[c].to_numpy(), truth.loc[c].to_numpy()
        top = np.argsort(-np.abs(t))[:20]
        if np.ptp(p) > 0:
            r_all.append(np.corrcoef(p, t)[0, 1])
            r_top.append(np.corrcoef(p[top], t[top])[0, 1])
    return {"truth_r_all": float(np.mean(r_all)) if r_all else None,
            "truth_r_top": float(np.mean(r_top)) if r_top else None}


def run_seed(screen, seed, steps, max_epochs, direction="add") -> dict:
    data, truth = screen_data(screen, seed)
    test = [c for c in held_out_conditions(data) if data.separator in c]
    predictions, seconds, epochs = {}, {}, {}
    variants = STEPS if direction == "add" else REMOVALS
    for i, (name, _) in enumerate(variants):
        if name not in steps:
            continue
        mc, tc, basal = (step_configs(i, seed, max_epochs) if direction == "add"
                         else removal_configs(name, seed))
        t0 = time.time()
        run = fit(data, tc, mc)
        seconds[name], epochs[name] = round(time.time() - t0, 1), len(run.history)
        predictions[name] = posterior_ate(run.model, run.guide, data, test, seed=seed,
                                          basal=basal).mean
        print(screen, seed, name, f"{seconds[name]:.0f}s", f"{epochs[name]} epochs", flush=True)
    table = score_ates(predictions, data, test, seed=seed)
    summary = summarise_scores(table)
    out = {"summary": {k: {c: _f(v) for c, v in row.items()} for k, row in summary.iterrows()},
           "train_seconds": seconds, "epochs_run": epochs, "held_out": test,
           "n_control_heldout": int(table["n_control"].iloc[0])}
    if truth is not None:
        baselines = baseline_ates(data, test)
        out["truth"] = {name: truth_r(t, truth, test)
                        for name, t in {**predictions, **baselines}.items()}
    return out


def _f(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _mean_sd(values):
    v = np.array([x for x in values if x is not None], dtype=float)
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0] if len(v) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screen", choices=["norman", *SIMULATED], default="norman")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--direction", choices=["add", "remove"], default="add",
                    help="add: from cradle-paper one extension at a time; remove: from cradle, "
                         "one extension taken out at a time")
    ap.add_argument("--steps", default=None,
                    help="comma-separated step names (default: every step of --direction)")
    ap.add_argument("--max-epochs", type=int, default=2000,
                    help="cap on the preset's early-stopped training (published: 2000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--readme-table", metavar="MARKER", default=None,
                    help="only write the result file's table into the README between "
                         "<!-- MARKER --> and <!-- /MARKER --> (no training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = STEPS if args.direction == "add" else REMOVALS
    steps = args.steps.split(",") if args.steps else [s for s, _ in variants]
    suffix = "" if args.direction == "add" else "_remove"
    out = Path(args.out or RESULTS / f"ablation_{args.screen}{suffix}.json")
    if args.readme_table:
        write_readme_table(json.loads(out.read_text()), args.readme_table)
        return
    per_seed = {}
    if out.exists():   # seeds run in separate calls merge
        per_seed = json.loads(out.read_text()).get("per_seed", {})
    for seed in [int(s) for s in args.seeds.split(",")]:
        per_seed[str(seed)] = run_seed(args.screen, seed, steps, args.max_epochs, args.direction)
        _write(out, args, per_seed)
    print(out.read_text()[:3000])


def _write(out, args, per_seed):
    predictors = list(next(iter(per_seed.values()))["summary"])
    mean = {p: {c: _mean_sd([s["summary"].get(p, {}).get(c) for s in per_seed.values()])
                for c in COLUMNS} for p in predictors}
    result = {"screen": args.screen, "commit": _commit(),
              "settings": {"direction": args.direction,
                           "steps": [s for s, _ in (STEPS if args.direction == "add" else REMOVALS)],
                           "max_epochs_preset": args.max_epochs,
                           "scoring": "score_ates: truth from held-out cells (held-out doubles "
                                      "minus held-out controls), baselines from training cells"},
              "seeds": sorted(per_seed), "mean_sd_over_seeds": mean, "per_seed": per_seed}
    if any("truth" in s for s in per_seed.values()):
        names = list(next(iter(per_seed.values()))["truth"])
        result["truth_mean_sd"] = {n: {k: _mean_sd([s["truth"][n][k] for s in per_seed.values()
                                                    if n in s.get("truth", {})])
                                       for k in ("truth_r_all", "truth_r_top")} for n in names}
    out.write_text(json.dumps(result, indent=2))


BASELINES = ["additive", "mean", "no_change", "linear", "ceiling"]


def markdown_table(result: dict) -> str:
    """The result's mean ± sd over seeds as a Markdown table (steps, then baselines)."""
    rows = result["mean_sd_over_seeds"]
    order = [s for s in result["settings"]["steps"] if s in rows] + \
        [b for b in BASELINES if b in rows]
    lines = ["| predictor | r, all genes | r, top-20 | R², top-20 | seeds |",
             "|---|---|---|---|---|"]
    for name in order:
        n = sum(name in s["summary"] for s in result["per_seed"].values())
        cells = [_cell(rows[name][c]) for c in COLUMNS]
        label = "split-half ceiling" if name == "ceiling" else f"`{name}`" \
            if name not in BASELINES else f"{name} (baseline)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def _cell(v) -> str:
    return "—" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def write_readme_table(result: dict, marker: str, readme: Path = ROOT / "README.md"):
    """Replace the README's text between ``<!-- marker -->`` and ``<!-- /marker -->``."""
    text = readme.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown_table(result)}\n{end}{tail}")


def _commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
