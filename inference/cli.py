"""The ``cradle-pyro`` command line.

Every subcommand reads and writes files a person can open (``.h5ad``, CSV,
JSON, Markdown, PNG, netCDF). Errors from bad input are one readable line and
exit status 2. Run ``cradle-pyro SUBCOMMAND --help`` for examples.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import yaml

from cradle_pyro.config import LIKELIHOODS, MODELS, ModelConfig
from cradle_pyro.errors import CradleInputError
from cradle_pyro.progress import Progress

from .baselines import BASELINES as BASELINE_NAMES
from .presets import PRESETS as PRESET_NAMES
from .outputs import TMP_MARK, check_output, write_csv, write_h5ad
from .train import TrainConfig

EXAMPLES = {
    "demo": """examples:
  cradle-pyro demo                      # simulated screen -> QC -> cradle & sams -> report
  cradle-pyro demo --out my_demo --epochs 40 --cells 5000 --genes 1000""",
    "qc": """examples:
  cradle-pyro qc screen.h5ad --out screen_qc.h5ad
  cradle-pyro qc papalexi.h5ad --out qc.h5ad --column low_total_counts=total_counts_transcriptome \\
      --column high_pct_mt=pct_counts_mt_transcriptome --per-criterion""",
    "train": """examples:
  cradle-pyro train screen.h5ad --out runs/cradle --perturbation-key perturbation --control control
  cradle-pyro train norman.h5ad --out runs/sams --perturbation-key perturbation --control control \\
      --model sams --split unseen-combinations --epochs 60 --qc-column low_total_counts=total_counts_transcriptome
  cradle-pyro train screen.h5ad --out runs/x --config settings.yaml   # any option below, as YAML keys
  cradle-pyro train screen.h5ad --out runs/ens --members 3   # an ensemble: 3 seeds, 3 × the time
  cradle-pyro train screen.h5ad --out runs/bag --members 5 --bootstrap   # bagged: calibrated

YAML keys are the long option names with '_' for '-', e.g.
  model: sams
  latent_dim: 16
  qc_columns: {low_total_counts: total_counts_transcriptome}""",
    "cross-validate": """examples:
  cradle-pyro cross-validate screen.h5ad --out cv.csv --split unseen-combinations
  cradle-pyro cross-validate screen.h5ad --out cv_100.csv --split unseen-combinations --epochs 100

Compares settings before you train: the seen cells (all but the split's test
cells, which are never touched) of each condition are dealt into --folds
folds; each fold validates a run trained on the others. The CSV has one row
per fold: val_ate_mse (model ATE against the ATE of the fold's clean cells,
mean over conditions and genes; lower is better), val_ate_r (Pearson r over
genes, mean over conditions), val_conditions, val_cells. Run it once per
setting with the same --seed (the same folds) and compare fold by fold. Takes
--folds times a training; accepts every `train` option.""",
    "effects": """examples:
  cradle-pyro effects runs/cradle --perturbations "P0+P3,P1" --out ate.csv
  cradle-pyro effects runs/cradle --perturbations "P0+P3" --num-draws 500 --interval 0.95 --out ate.csv

The CSV has one row per (perturbation, gene): perturbation, gene, mean (posterior
mean ATE, log2 CP10k units), lower, upper (central credible interval of mass
`interval`), prob_increase, prob_decrease (posterior probabilities of the sign),
interval. --wide writes the posterior means only, perturbations × genes.

The ATE is over the screen's own cells: clean training cells, each with its
basal state drawn from q(basal | x), put under the perturbation and under
control (--basal abducted). --basal prior makes new cells from N(0, I) instead;
on simulated screens, whose basal states cluster, that was less accurate
(ATE r 0.969 vs 0.974) and overstated effects by about 8 %.

A run trained with --members K is an ensemble: the draws are shared among its
K members and the interval mixes their posteriors (one run's guide alone is
overconfident; see docs/queries.md and "Ensembles" in docs/measurements.md).

--interval-kind observed gives predictive intervals for the ATE as observed from
finitely many cells (by default as many clean cells of each condition and of control
as the screen holds; --observed-cells N,M to choose): use them to compare with data.
The default, ate, is the credible interval of the population ATE.""",
    "interactions": """examples:
  cradle-pyro interactions runs/cradle --pairs "P0+P1,P2+P3" --out pairs.csv --figure pairs.png
  cradle-pyro interactions runs/cradle --pairs pairs.txt --out pairs.csv --genes-out genes.csv
  cradle-pyro interactions runs/cradle --pairs all --out pairs.csv --figure top_pairs.png

The interaction of A+B on a gene is ATE(A+B) − ATE(A) − ATE(B) (log2 CP10k), under
every posterior draw, all conditions with common random numbers. --out has one row
per pair, ranked: ratio (|interaction| / |additive prediction|, posterior mean and
interval), magnitude, prob_interacting (P(ratio > --tau)), direction (synergy: further
than additive; buffering: less) with prob_synergy, and for pairs the screen measured
the observed interaction's magnitude and its r with the prediction. --genes-out
has one row per (pair, gene) with intervals and P(|interaction| > 0.1).
"all" asks for every pair of the run's targets. The default --estimator batched
computes all conditions together with the count noise integrated (every pair of 100
singles at 2,000 genes in minutes on 2 cores: benchmarks/results/screen_queries.json);
--estimator sampled is the effects command's per-condition estimator.""",
    "sample": """examples:
  cradle-pyro sample runs/cradle --perturbation "P0+P3" --n 200 --artifact clean --out cells.h5ad""",
    "predict": """examples:
  cradle-pyro predict runs/cradle --out pred.h5ad --observed real.h5ad   # the run's held-out conditions
  cradle-pyro predict runs/cradle --perturbations "A+B,C" --n 500 --out pred.h5ad
  cradle-pyro predict runs/cradle --baseline additive --out additive.h5ad
  cell-eval run -ap pred.h5ad -ar real.h5ad --profile full --ceiling -o cell-eval/

Writes cells in the layout Arc Institute's cell-eval reads: obs "target_gene"
(the control is "non-targeting"; obs "condition" keeps your label) and X
log1p-normalised, log(1 + 1e4 x / sum x). --observed also writes the truth: the
held-out clean cells of the conditions and the held-out clean control cells, no
cell the run trained on. --baseline writes a baseline's cells instead of the
model's (additive, mean, no_change or linear, built from the run's training cells
only, added to training control cells), so every predictor meets the same scorer.""",
    "counterfactual": """examples:
  cradle-pyro counterfactual runs/cradle screen.h5ad --do artifact=clean --out cf.h5ad
  cradle-pyro counterfactual runs/cradle screen.h5ad --do dosage=P1 --do artifact=clean --out cf.h5ad""",
    "evaluate": """examples:
  cradle-pyro evaluate runs/cradle --out report/          # metrics.json, report.md, figures/
  cradle-pyro evaluate runs/cradle --compare runs/sams --out report/""",
    "artifacts": """examples:
  cradle-pyro train screen.h5ad --out runs/latent --artifact-state latent
  cradle-pyro artifacts runs/latent --out artifact_posterior.csv --figure artifacts.png

One row per training cell: p_<cause> (posterior probability of each latent artifact
cause: damaged, low_complexity, doublet by default), p_any, and the QC flags
(flag_<criterion>) beside them. Cells with a flag but p_any < 0.5 are ones the
model judges clean despite the threshold; counterfactual --do artifact=clean
leaves them nearly as they are.""",
    "embed": """examples:
  cradle-pyro embed runs/cradle --out cells.h5ad --umap umap.png
  # then in Python: sc.pp.neighbors(adata, use_rep="X_cradle_basal"); sc.tl.umap(adata)

obsm["X_cradle_basal"]: the cell before anything happened (conditions should mix);
obsm["X_cradle_latent"]: the decoder input (conditions separate).""",
    "diagnose": """examples:
  cradle-pyro diagnose runs/cradle --out posterior.nc     # ArviZ InferenceData, summary CSV, plots""",
}

def _class_balance(text: str):
    """``--class-balance``: a share in (0, 1) or ``published``."""
    if text == "published":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a share in (0, 1) nor "
                                         "'published'") from None


# option -> (section, type, default, help); section says which config it belongs to
TRAIN_OPTIONS = {
    "model": ("model", str, "cradle", f"model switch: {', '.join(MODELS)}"),
    "likelihood": ("model", str, "nb", f"count likelihood: {', '.join(LIKELIHOODS)}"),
    "latent_dim": ("model", int, 10, "latent dimension d"),
    "hidden_dim": ("model", int, 128, "width of the encoder/decoder MLPs"),
    "combine": ("model", str, None, "concat or sum (default: the model's published choice)"),
    "effect_prior": ("model", str, "normal", "normal, laplace or student-t, each also as "
                     "NAME-learnt-scale (the prior scale fitted with the model)"),
    "epochs": ("train", int, None, "epochs (default: from the number of training cells, 200 "
               "up to 20,000 cells and 200 × 20,000 cell visits beyond, at least 10; with "
               "--select ate or elbo, early stopping may end sooner)"),
    "batch_size": ("train", int, 128, "cells per minibatch"),
    "lr": ("train", float, 5e-3, "AdamW learning rate"),
    "beta": ("train", float, 1.0, "weight of CRADLE's counterfactual alignment term (0: off)"),
    "num_particles": ("train", int, 5, "vectorised ELBO particles"),
    "patience": ("train", int, 15, "early-stopping patience in epochs"),
    "select": ("train", str, "last", "which state to keep: last (the final epoch), ate "
               "(validation ATE error on seen conditions) or elbo (validation -ELBO)"),
    "warmup": ("train", int, 0, "epochs before any state is kept or patience counts"),
    "independence": ("train", float, 3.0, "weight λ of the basal-leakage penalty (each "
                     "treatment group's mean basal state, over recent batches, pulled to the "
                     "prior's; 0 = off)"),
    "alignment_weighting": ("train", str, "per-cell", "per-cell or published (beta times the "
                            "batch size, the published CRADLE loss)"),
    "weight_decay": ("train", float, 1e-5, "AdamW weight decay"),
    "clip_norm": ("train", float, 10.0, "gradient-norm clipping"),
    "class_balance": ("train", _class_balance, None, "share of likelihood weight on artifact "
                      "cells, or published (the published per-batch weights; off by default)"),
    "guide_temperature": ("train", float, 0.5, "temperature of the guide's straight-through "
                          "mask (the published model: 1.0)"),
    "effect_encoder_layers": ("model", int, 1, "hidden layers of q(effect | mask)'s MLP"),
    "decoder_layers": ("model", int, None, "hidden layers of the decoder (default: n_layers)"),
    "residual_encoder": ("model", bool, True, "the basal state is the encoder's output minus "
                         "the perturbation and artifact offsets (--no-residual-encoder: the "
                         "output itself, as published)"),
    "n_layers": ("model", int, 1, "hidden layers of the encoder/decoder MLPs"),
    "effect_scale": ("model", float, 1.0, "scale of the effect prior"),
    "mask_prob": ("model", float, 0.1, "prior probability that a perturbation moves a latent dim"),
    "target_effect_scale": ("model", float, 2.0, "prior scale of the direct effect on a "
                            "perturbation's own target gene (natural log)"),
    "target_effects": ("model", bool, True, "direct effect of a perturbation on its own target "
                       "gene when the target is measured (--no-target-effects: off)"),
    "gene_effects": ("model", bool, True, "a direct, sparse effect of each perturbation on "
                     "every gene beside its latent effect (--no-gene-effects: off)"),
    "gene_effect_prior": ("model", str, "laplace", "prior of the direct per-gene "
                          "effects: laplace, normal or student-t, each also as *-learnt-scale "
                          "(a scale per perturbation learnt with the model)"),
    "gene_effect_scale": ("model", float, 3.0, "prior scale of the direct per-gene effects "
                          "(natural log; the starting scale when learnt)"),
    "library_effects": ("model", bool, True, "the library size as a mediator: each "
                        "perturbation's effect on it is learnt, and an intervention moves each "
                        "cell's library with it (--no-library-effects: exogenous)"),
    "library_effect_scale": ("model", float, 1.0, "prior scale of the effects on the library "
                             "size (natural log)"),
    "bayesian_decoder": ("model", bool, False, "the decoder's output layer as a latent with a "
                         "prior (site decoder_weight): what the cells leave unknown about each "
                         "gene's response enters every interval (--bayesian-decoder: on)"),
    "bayesian_decoder_layers": ("model", str, "output", "with --bayesian-decoder: which "
                                "decoder weights are latents, output (the output layer) or all"),
    "decoder_weight_scale": ("model", float, 1.0, "prior scale of the decoder's latent weights "
                             "(with --bayesian-decoder)"),
    "artifact_state": ("model", str, "observed", "observed (the QC flags are the artifact "
                       "state) or latent (flags and QC covariates are evidence about it; "
                       "cleaning then trusts the posterior, not the threshold)"),
    "artifact_evidence": ("model", str, "covariates", "with --artifact-state latent: abduct it "
                          "from the QC covariates (covariates), the QC flags as noisy labels "
                          "(flags) or both"),
    "on_divergence": ("train", str, "lower-lr", "on a numerical fault: lower-lr (restore, halve "
                      "the learning rate, retry) or stop"),
    "max_lr_halvings": ("train", int, 4, "how often lower-lr may halve the learning rate"),
    "guide": ("train", str, "correlated", "correlated or mean-field"),
    "members": ("run", int, 1, "independently trained runs (seeds seed, seed+1, ...), saved in "
                "RUN/members/; effects and evaluate mix their posteriors (an ensemble: K times the "
                "training, wider and better-calibrated intervals)"),
    "bootstrap": ("train", bool, False, "train on a bootstrap replicate of the training cells "
                  "(seeded by --seed); with --members K each member on its own: the bagged "
                  "posterior, whose intervals are the best calibrated we measured (SBC 90%% "
                  "coverage 0.85-0.91 with 5 members, 0.72-0.77 for one plain run)"),
    "device": ("train", str, "cpu", "cpu or cuda"),
    "seed": ("train", int, 0, "random seed (same seed, same numbers on CPU)"),
    "threads": ("train", int, None, "CPU threads for torch during training (default: torch's)"),
    "split": ("data", str, "random", "random, unseen-combinations, or an obs column of train/val/test"),
    "layer": ("data", str, None, "layer holding raw counts (default: X)"),
    "separator": ("data", str, "+", "separator of combination labels (A+B)"),
    "qc_k": ("data", float, 3.0, "k of the k·MAD QC rules"),
    "no_doublets": ("data", bool, False, "skip scrublet doublet detection"),
    "per_criterion": ("data", bool, False, "one artifact kind per QC criterion instead of one"),
    "round_counts": ("data", bool, False, "round non-integer counts instead of failing"),
    "counts_on_disk": ("data", bool, False, "keep the counts in the .h5ad file (read in chunks "
                       "and batch groups; memory bounded by the batch group; no scrublet)"),
}


def _parse_pairs(pairs, what):
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise CradleInputError(f"{what} {item!r} must look like KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _data_args(opts: dict, perturbation_key, control) -> dict:
    return dict(perturbation_key=perturbation_key, control_label=control,
                combination_separator=opts["separator"], layer=opts["layer"], qc_k=opts["qc_k"],
                qc_columns=opts.get("qc_columns") or None, doublets=not opts["no_doublets"],
                artifact_kinds="per-criterion" if opts["per_criterion"] else "any",
                split=opts["split"], non_integer_counts="round" if opts["round_counts"] else "error",
                counts_on_disk=opts["counts_on_disk"], seed=opts["seed"])


def resolve_train_options(args) -> dict:
    """Defaults < a preset (``--preset`` or the YAML's ``preset:``) < YAML config < explicit
    command-line flags."""
    from .presets import preset_options

    opts = {k: spec[2] for k, spec in TRAIN_OPTIONS.items()}
    opts["qc_columns"] = {}
    loaded = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise CradleInputError(f"config file {str(path)!r} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CradleInputError(f"{path.name} is not valid YAML ({first}); "
                                   "write one `key: value` per line") from None
        if not isinstance(loaded, dict):
            raise CradleInputError(f"{path.name} must hold `key: value` pairs, not a "
                                   f"{type(loaded).__name__}")
        _check_yaml_types(loaded, path.name)
        unknown = set(loaded) - set(opts) - set(YAML_ONLY) - {"perturbation_key", "control",
                                                                   "progress", "preset"}
        if unknown:
            raise CradleInputError(f"unknown keys in {path.name}: {sorted(unknown)}; "
                                   f"valid keys: {sorted(opts)}")
    name = getattr(args, "preset", None) or loaded.get("preset")
    if name:
        opts.update(preset_options(name))
        opts["preset"] = name
    opts.update(loaded)
    for key in TRAIN_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            opts[key] = value
    opts["qc_columns"] = {**opts.get("qc_columns", {}), **_parse_pairs(args.qc_column, "--qc-column")}
    if getattr(args, "quiet", False):
        opts["progress"] = False
    opts["perturbation_key"] = args.perturbation_key or opts.get("perturbation_key") or "perturbation"
    opts["control"] = args.control or opts.get("control") or "control"
    return opts


def _check_yaml_types(loaded: dict, name: str):
    """YAML values have the option's type (a quoted "false" is a string, not a boolean)."""
    from cradle_pyro.validation import check_value

    kinds = {bool: "bool", int: "int", float: "float"}
    for key, value in loaded.items():
        spec = TRAIN_OPTIONS.get(key)
        if spec is None or value is None:
            continue
        typ = spec[1]
        if typ in kinds:
            check_value(key, value, kinds[typ], owner=name)
        elif typ is str and not isinstance(value, str):
            raise CradleInputError(f"{name}: {key}={value!r} must be text")
    for key in ("mask_beta", "flag_sensitivity_prior", "flag_specificity_prior"):
        if key in loaded and not (isinstance(loaded[key], list) and len(loaded[key]) == 2):
            raise CradleInputError(f"{name}: {key} must be a list [a, b] of the Beta prior")
    if "artifact_causes" in loaded and not (isinstance(loaded["artifact_causes"], list)
                                            and all(isinstance(c, str) for c in loaded["artifact_causes"])):
        raise CradleInputError(f"{name}: artifact_causes must be a list of names, "
                               "e.g. [damaged, low_complexity, doublet]")
    if "priors" in loaded and not (isinstance(loaded["priors"], dict)
                                   and all(isinstance(v, str) for v in loaded["priors"].values())):
        raise CradleInputError(f"{name}: priors must map sites to prior names, "
                               "e.g. {effect: laplace}; distributions objects need the Python API")
    if "progress" in loaded and not isinstance(loaded["progress"], bool):
        raise CradleInputError(f"{name}: progress={loaded['progress']!r} must be true or false")
    if "qc_columns" in loaded and not isinstance(loaded["qc_columns"], dict):
        raise CradleInputError(f"{name}: qc_columns must map criteria to obs columns, "
                               "e.g. {low_total_counts: total_counts_transcriptome}")


# settable in YAML only (structured values): key -> (section, check)
YAML_ONLY = {"mask_beta": "model", "priors": "model", "flag_sensitivity_prior": "model",
             "flag_specificity_prior": "model", "artifact_causes": "model"}


def configs_from_options(opts):
    model_keys = [k for k, s in TRAIN_OPTIONS.items() if s[0] == "model"]
    model_keys += [k for k, section in YAML_ONLY.items() if section == "model" and k in opts]
    mc = ModelConfig(**{k: opts[k] for k in model_keys})
    tc = TrainConfig(**{k: opts[k] for k, s in TRAIN_OPTIONS.items() if s[0] == "train"},
                     progress=opts.get("progress", True))
    return mc, tc


# ----------------------------------------------------------------- commands
def cmd_qc(args):
    from cradle_pyro.qc import label_artifacts

    adata = _read(args.input)
    t = label_artifacts(adata, k=args.k, columns=_parse_pairs(args.column, "--column") or None,
                        doublets=not args.no_doublets,
                        artifact_kinds="per-criterion" if args.per_criterion else "any",
                        layer=args.layer, seed=args.seed)
    print(t.describe()[["column", "direction", "median_raw", "threshold_raw", "active"]].to_string())
    shares = adata.obs.filter(like="qc_").mean().round(4).to_dict()
    print(f"artifact cells: {int(adata.obs['artifact'].sum())} of {adata.n_obs} "
          f"({adata.obs['artifact'].mean():.1%}); per criterion: {shares}")
    write_h5ad(adata, args.out)
    print(f"wrote {args.out}")


def cmd_train(args):
    from .run_io import RunFolderLock, check_output_folder, save_members, save_run, train_from_file

    opts = resolve_train_options(args)
    if opts["members"] < 1:
        raise CradleInputError(f"--members {opts['members']}: an ensemble needs at least one run "
                               "(1, the default, trains a single run)")
    mc, tc = configs_from_options(opts)
    data_args = _data_args(opts, opts["perturbation_key"], opts["control"])
    out = check_output_folder(args.out, overwrite=args.overwrite, resume=args.resume)
    for source in filter(None, (args.input, args.config)):
        if Path(os.path.realpath(source)).is_relative_to(out):
            raise CradleInputError(f"--out {args.out!r} holds the input {source!r}; choose "
                                   "another folder for the run")
    with RunFolderLock(out):
        # starting over beside an old run: its checkpoints go aside until the new run is
        # saved, so an interruption leaves the old run as it was (never a mixed folder)
        replacing = not args.resume and out.is_dir() and any(out.iterdir())
        pending = out.parent / f".{out.name}.pending-{os.getpid()}"
        ckpt_dir = pending / "checkpoints" if replacing else out / "checkpoints"
        try:
            run = train_from_file(args.input, tc, mc, checkpoint_dir=ckpt_dir,
                                  resume=args.resume, **data_args)
            save_run(run, out, overwrite=True, checkpoints=ckpt_dir, extra_files={
                "resolved_config.yaml": yaml.safe_dump({k: v for k, v in opts.items()},
                                                       sort_keys=True)})
            save_members(run, out, opts["members"])
        except KeyboardInterrupt:
            raise Interrupted(_train_interrupted(args, out, ckpt_dir, replacing, tc.epochs)) from None
        except OSError as err:  # disk full, permissions: say what is left and how to go on
            raise CradleInputError(describe_os_error(err) + "; " + _train_interrupted(
                args, out, ckpt_dir, replacing, tc.epochs, verb="stopped")) from None
        finally:
            if replacing:
                shutil.rmtree(pending, ignore_errors=True)
    h = run.history
    print(f"trained {mc.model} for {len(h)} epochs (best {run.best_epoch}); "
          f"best validation -ELBO per cell {h['val_loss'].min():.2f}; run saved in {args.out}"
          + (f" with {opts['members'] - 1} more members in {Path(args.out) / 'members'}"
             if opts["members"] > 1 else ""))


def _train_interrupted(args, out: Path, ckpt_dir: Path, replacing: bool, epochs: int,
                       verb: str = "interrupted") -> str:
    """What a training that ended early (``verb``) left, and how to go on."""
    if (out / "config.json").exists() and not replacing and not args.resume:
        return f"{verb} while training ensemble members; the first run is saved in {args.out}"
    if replacing:
        return f"{verb}; {args.out!r} still holds what it held before (nothing was replaced)"
    ckpt = ckpt_dir / "checkpoint.pt"
    if ckpt.exists():
        from .train import load_tensors

        done = int(load_tensors(ckpt)["epoch"]) + 1
        return (f"{verb} after epoch {done} of {epochs}; the same command with --resume "
                f"continues from epoch {done}")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        out.rmdir()  # only if empty: nothing of this training was kept
    return f"{verb} before the first epoch ended; nothing was saved"


def cmd_cross_validate(args):
    from .cross_validation import cross_validate

    opts = resolve_train_options(args)
    if opts["counts_on_disk"] or opts["members"] != 1:
        raise CradleInputError("cross-validate trains one run per fold with the counts in memory; "
                               "drop --counts-on-disk and --members")
    mc, tc = configs_from_options(opts)
    data_args = _data_args(opts, opts["perturbation_key"], opts["control"])
    table = cross_validate(_read(args.input), tc, mc, folds=args.folds, data_kwargs=data_args,
                           seed=opts["seed"])
    write_csv(table, args.out, index=False)
    summary = "; ".join(f"{c} {table[c].mean():.4f} ± {table[c].std(ddof=1):.4f}"
                        for c in ("val_ate_mse", "val_ate_r"))
    print(f"{args.folds} folds: {summary} (mean ± sd over folds); wrote {args.out}")


MIN_DRAWS = 20  # fewer posterior draws make an interval's end points noise


def requested_conditions(text, data, path=None) -> list:
    """The conditions asked for: comma-separated text, or one per line from ``path``."""
    from cradle_pyro.labels import check_targets

    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CradleInputError(f"cannot read --perturbations-file {str(path)!r} "
                                   f"({getattr(err, 'strerror', None) or err})") from None
        perts, where = [p.strip() for p in lines if p.strip() and not p.startswith("#")], \
            f"--perturbations-file {str(path)!r}"
    else:
        perts, where = [p.strip() for p in text.split(",") if p.strip()], \
            f"--perturbations {text!r}"
    if not perts:
        raise CradleInputError(f"{where} names no condition; give comma-separated labels, "
                               'e.g. "A+B,C", or --perturbations-file with one per line')
    for p in perts:
        if p != data.control_label:
            check_targets(p, data.separator, data.control_label)
    twice = sorted({p for p in perts if perts.count(p) > 1})
    if twice:
        raise CradleInputError(f"{where} names {twice[0]!r} twice; name each condition once")
    return perts


def warn_few_draws(num_draws: int):
    if num_draws < MIN_DRAWS:
        warnings.warn(f"--num-draws {num_draws}: an interval from fewer than {MIN_DRAWS} "
                      "posterior draws is not to be trusted (with one draw, lower = upper = "
                      "mean); use the default or more", UserWarning, stacklevel=2)


def observed_cell_counts(data, perts, given=None) -> dict:
    """(cells of the condition, control cells) an observed ATE averages, per condition:
    ``--observed-cells N,M`` for all, or the screen's own clean cells of each."""
    if given:
        try:
            pair = tuple(int(v) for v in given.split(","))
        except ValueError:
            pair = ()
        if len(pair) != 2 or min(pair) < 1:
            raise CradleInputError(f"--observed-cells {given!r} must be two positive whole "
                                   "numbers N,M: cells of the condition, control cells")
        return {p: pair for p in perts}
    from .scoring import observed_cell_counts as screen_counts

    if getattr(data, "is_stand_in", False):
        raise CradleInputError("--interval-kind observed needs the screen's cell counts; pass "
                               "--observed-cells N,M or make the run's training file available")
    return screen_counts(data, perts)


def cmd_effects(args):
    from .ensembles import ensemble_ate
    from .run_io import load_members

    runs = load_members(args.run, device=args.device)
    perts = requested_conditions(args.perturbations, runs[0].data, args.perturbations_file)
    estimator, num_draws, n_cells = _estimator(args)
    warn_few_draws(num_draws)
    kind = {"kind": args.interval_kind}
    if args.interval_kind == "observed":
        if args.estimator == "batched":
            raise CradleInputError("--interval-kind observed samples counts: use it with "
                                   "--estimator sampled (the default)")
        kind["observed_cells"] = observed_cell_counts(runs[0].data, perts, args.observed_cells)
    elif args.estimator == "batched":
        kind = {}
    post = ensemble_ate(runs, runs[0].data, perts, num_draws=num_draws, n_cells=n_cells,
                        seed=args.seed, interval=args.interval, basal=args.basal,
                        estimator=estimator, **kind)
    ate = post.mean
    write_csv(ate if args.wide else post.to_long(), args.out, index=args.wide)
    top = ate.abs().max(1).round(3).to_dict()
    print(f"wrote {args.out} ({ate.shape[0]} perturbations × {ate.shape[1]} genes); "
          f"largest |ATE| per perturbation: {top}")


def _requested_pairs(text: str, data) -> list:
    from .interactions import all_pairs

    if text == "all":
        return all_pairs(data)
    if Path(text).is_file():
        return requested_conditions(None, data, text)
    return requested_conditions(text, data)


def _estimator(args):
    """``--estimator`` and its ``--num-draws``/``--n-cells``, the estimator's defaults where not given."""
    from .screen_queries import ESTIMATORS

    fn, draws, cells = ESTIMATORS[args.estimator]
    return fn, args.num_draws or draws, args.n_cells or cells


def cmd_interactions(args):
    from .interactions import conditions_computed, interaction_figure, interaction_posterior
    from .run_io import load_members

    runs = load_members(args.run, device=args.device)
    pairs = _requested_pairs(args.pairs, runs[0].data)
    _, num_draws, n_cells = _estimator(args)
    warn_few_draws(num_draws)
    total = conditions_computed(pairs, num_draws, runs[0].data.n_genes, runs[0].data.separator)
    bar = Progress(total, "conditions", enabled=not args.quiet)
    post = interaction_posterior(runs, runs[0].data, pairs, estimator=args.estimator,
                                 num_draws=num_draws, n_cells=n_cells, seed=args.seed,
                                 interval=args.interval, tau=args.tau, basal=args.basal,
                                 progress=lambda done: bar.update(done - bar.done))
    bar.close()
    summary = post.summary()
    write_csv(summary, args.out, index=False)
    if args.genes_out:
        write_csv(post.to_long(), args.genes_out, index=False)
    if args.figure:
        interaction_figure(summary, args.figure)
    top = summary.head(3)[["pair", "ratio", "prob_interacting", "direction"]].round(3)
    print(f"wrote {args.out} ({len(summary)} pairs); most likely interacting: "
          f"{top.to_dict(orient='records')}")


def cmd_sample(args):
    from .effects import sample_cells
    from .run_io import load_run

    run = load_run(args.run, device=args.device)
    cells = sample_cells(run.model, run.guide, run.data, args.perturbation, n=args.n,
                         artifact=args.artifact, seed=args.seed)
    write_h5ad(cells, args.out)
    print(f"wrote {args.out}: {cells.n_obs} cells under do(dosage={args.perturbation}, "
          f"artifact={args.artifact})")


def cmd_predict(args):
    from .baselines import baseline_ates
    from .predictions import baseline_cells, observed_cells, predicted_cells
    from .run_io import load_run
    from .scoring import held_out_conditions

    run = load_run(args.run, device=args.device)
    data = run.data
    if args.perturbations or args.perturbations_file:
        perts = requested_conditions(args.perturbations, data, args.perturbations_file)
    else:
        perts = held_out_conditions(data, "test")
        if not perts:
            raise CradleInputError("the run holds no condition out in 'test'; name the "
                                   "conditions with --perturbations")
    if args.baseline:
        table = baseline_ates(data, perts, kinds=(args.baseline,))[args.baseline]
        cells = baseline_cells(data, table, n=args.n, seed=args.seed, name=args.baseline)
        what = f"the {args.baseline} baseline's"
    else:
        cells = predicted_cells(run.model, run.guide, data, perts, n=args.n, seed=args.seed)
        what = "generated clean"
    write_h5ad(cells, args.out)
    print(f"wrote {args.out}: {what} cells, {args.n} per condition for {len(perts)} conditions "
          "and the control (obs target_gene, control non-targeting, X log1p-normalised)")
    if args.observed:
        real = observed_cells(data, perts)
        write_h5ad(real, args.observed)
        print(f"wrote {args.observed}: {real.n_obs} held-out clean cells (the truth)")


def cmd_counterfactual(args):
    from .counterfactuals import counterfactual
    from .run_io import cells_for_run, load_run

    run = load_run(args.run, device=args.device)
    todo = _parse_pairs(args.do, "--do")
    bad = set(todo) - {"artifact", "dosage"}
    if bad or not todo:
        raise CradleInputError(f"--do takes artifact=... and/or dosage=...; got {sorted(todo) or 'nothing'}")
    data = cells_for_run(run, _read(args.input))
    cf = counterfactual(run.model, run.guide, data, artifact=todo.get("artifact"),
                        dosage=todo.get("dosage"), num_samples=args.num_samples, seed=args.seed,
                        abduct_from=args.abduct_from)
    write_h5ad(cf, args.out)
    print(f"wrote {args.out}: {cf.n_obs} cells; X = sampled counterfactual counts, "
          "layers: expected, factual, factual_expected")


def cmd_evaluate(args):
    from .evaluate import evaluate
    from .run_io import load_members

    runs = {}
    for path in [args.run] + list(args.compare or []):
        members = load_members(path, device=args.device)
        name = members[0].model_config.model
        runs[name if name not in runs else Path(path).name] = members
    data = next(iter(runs.values()))[0].data
    twins = _read_twins(args.twins)
    report = evaluate(runs, data, args.out, split=args.split, num_draws=args.num_draws,
                      progress=not args.quiet,
                      n_cells=args.n_cells, seed=args.seed, basal=args.basal, twins=twins)
    _print_headline(report, args.out)


def cmd_embed(args):
    from .embeddings import cells_with_latents, umap_figure
    from .run_io import load_run

    run = load_run(args.run, device=args.device)
    cells = cells_with_latents(run.model, run.guide, run.data, max_cells=None, seed=args.seed,
                               with_counts=True)
    write_h5ad(cells, args.out)
    print(f"wrote {args.out}: {cells.n_obs} cells with obsm X_cradle_basal "
          f"({cells.obsm['X_cradle_basal'].shape[1]} dims) and X_cradle_latent")
    if args.umap:
        umap_figure(cells, args.umap)
        print(f"wrote {args.umap}")


def cmd_artifacts(args):
    from .artifacts import (artifact_figure, artifact_posterior, artifact_summary,
                            describe_artifact_summary)
    from .run_io import load_run

    run = load_run(args.run, device=args.device)
    twins = _read_twins(args.twins)
    post = artifact_posterior(run.model, run.guide, run.data, abduct_from=args.abduct_from)
    write_csv(post, args.out)
    print(f"wrote {args.out}: " + describe_artifact_summary(artifact_summary(post)))
    if args.figure:
        artifact_figure(post, run.data, args.figure)
        print(f"wrote {args.figure}")
    if twins is not None:
        from .counterfactuals import cleaning_against_twins, counterfactual

        cf = counterfactual(run.model, run.guide, run.data, artifact="clean", num_samples=4,
                            abduct_from=args.abduct_from)
        table = cleaning_against_twins(cf, twins)
        print("cleaning against the clean twins (ratio < 1: brought closer; 1: left alone):")
        print(table.round(3).to_string())


def cmd_diagnose(args):
    from .diagnostics import diagnose_run
    from .run_io import load_run

    run = load_run(args.run, device=args.device)
    summary = diagnose_run(run, args.out, n_cells=args.n_cells, num_draws=args.draws, seed=args.seed)
    print(json.dumps(summary, indent=2))


def _print_headline(report, out):
    print(f"report: {Path(out) / 'report.md'}")
    for name, a in report["summary"].items():
        extra = ""
        m = report["models"].get(name, {})
        if "qc_pass_rate_generated_clean" in m:
            extra = f", QC pass rate of generated clean cells {m['qc_pass_rate_generated_clean']:.3f}"
        label = "noise ceiling" if name == "ceiling" else "held-out ATE r"

        def f(v):
            return "—" if v is None else f"{v:.3f}"
        print(f"  {name:9s} {label} {f(a['pearson_all'])} (top-20 DE {f(a['pearson_top'])})" + extra)


def cmd_demo(args):
    from cradle_pyro import simulate_screen

    from .evaluate import evaluate
    from .run_io import save_run, train_from_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    adata = simulate_screen(n_cells=args.cells, n_genes=args.genes, seed=args.seed,
                            keep_expected=True)
    screen = out / "simulated_screen.h5ad"
    write_h5ad(adata, screen)
    print(f"simulated {adata.n_obs} cells × {adata.n_vars} genes with injected artifacts -> {screen}")
    runs = {}
    for kind in ("cradle", "sams"):
        run = train_from_file(screen, TrainConfig(epochs=args.epochs, seed=args.seed,
                                                          progress=not args.quiet),
                              ModelConfig(model=kind), split="unseen-combinations",
                              heldout_fraction=0.34, seed=args.seed)
        save_run(run, out / "runs" / kind, overwrite=args.overwrite)
        runs[kind] = run
    data = runs["cradle"].data
    qc_share = float(data.artifact.max(1).mean())
    print(f"QC labelled {qc_share:.1%} of cells as artifacts (k=3 MAD, scrublet)")
    report = evaluate(runs, data, out / "report", split="test", seed=args.seed,
                      progress=not args.quiet, twins=adata)
    _print_headline(report, out / "report")
    print(f"done in {time.time() - t0:.0f} s; runs in {out / 'runs'}")


# ------------------------------------------------------------------ parser
def _read(path):
    from .run_io import read_anndata

    return read_anndata(path)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like the library's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, low=None, low_open=False, high=None, high_open=False):
    """An argparse type that range-checks, with the library's wording."""
    from cradle_pyro.validation import check_value

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        try:
            check_value("value", value, kind.__name__, low, high, low_open=low_open,
                        high_open=high_open)
        except CradleInputError as err:
            raise argparse.ArgumentTypeError(str(err).replace("value=", "")) from None
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 1)
SEED = _number(int, 0)
POSITIVE = _number(float, 0, low_open=True)
MASS = _number(float, 0, low_open=True, high=1, high_open=True)


def add_draws_arguments(p):
    """--num-draws and --n-cells of the commands that compute posterior ATEs."""
    from .effects import N_CELLS, NUM_DRAWS

    p.add_argument("--num-draws", type=POSITIVE_INT, default=NUM_DRAWS,
                   help=f"posterior draws of the effects (default {NUM_DRAWS}: another --seed "
                        "then moves Norman's held-out r by < 0.01)")
    p.add_argument("--n-cells", type=POSITIVE_INT, default=N_CELLS,
                   help=f"clean cells per draw and condition (default {N_CELLS})")


def add_twins_argument(p, what: str):
    """--twins: a simulated screen whose cells keep their clean twins."""
    p.add_argument("--twins", default=None, metavar="H5AD",
                   help="a simulated screen whose cells keep their clean twins (layers "
                        f"clean_expected or clean): {what}")


def _read_twins(path):
    """The --twins file, its twin layer checked before any long work (``None`` without one)."""
    if not path:
        return None
    from .counterfactuals import twin_layer

    twins = _read(path)
    try:
        twin_layer(twins)
    except CradleInputError as err:
        raise CradleInputError(f"--twins {path}: {err}") from None
    return twins


def add_abduct_from_argument(p):
    """--abduct-from: the evidence a latent artifact state is abducted from."""
    from .artifacts import ABDUCT_FROM, DEFAULT_ABDUCT_FROM

    p.add_argument("--abduct-from", choices=ABDUCT_FROM, default=DEFAULT_ABDUCT_FROM,
                   help="runs with --artifact-state latent: abduct each cell's artifact state "
                        "from its counts and QC evidence together (counts+qc) or from the QC "
                        f"evidence alone (qc, the cut used in training); default {DEFAULT_ABDUCT_FROM}")


def add_estimator_arguments(p, default: str):
    """--estimator, --num-draws and --n-cells (defaults: the estimator's own)."""
    from .effects import N_CELLS, NUM_DRAWS
    from .screen_queries import ENGINE_CELLS, ENGINE_DRAWS

    p.add_argument("--estimator", choices=["batched", "sampled"], default=default,
                   help=f"sampled: a condition at a time, counts sampled ({NUM_DRAWS} draws x "
                        f"{N_CELLS} cells); batched: the query engine, every condition at once "
                        f"with the count noise integrated ({ENGINE_DRAWS} draws x {ENGINE_CELLS} "
                        f"cells each; far faster for many conditions) (default {default})")
    p.add_argument("--num-draws", type=POSITIVE_INT, default=None,
                   help="posterior draws of the effects (default: the estimator's; another "
                        "--seed then moves Norman's held-out r by about 0.01 or less)")
    p.add_argument("--n-cells", type=POSITIVE_INT, default=None,
                   help="clean cells per draw and condition (default: the estimator's)")


def add_basal_argument(p):
    """``--basal``: which cells a model ATE averages over (``cradle_pyro.inference.effects.condition_draws``)."""
    p.add_argument("--basal", choices=["abducted", "prior"], default="abducted",
                   help="which cells the ATE is over: 'abducted' (default) puts clean training "
                        "cells, basal states drawn from q(basal | x), under each condition; "
                        "'prior' makes new cells from N(0, I)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cradle-pyro",
        description="Causal generative modelling of single-cell perturbation screens "
                    "(CRADLE-VAE in Pyro). Start with `cradle-pyro demo`.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name not in ("train", "cross-validate"):  # these take it as TrainConfig.threads
            p.add_argument("--threads", type=POSITIVE_INT, default=None,
                           help="CPU threads for torch (default: torch's own choice)")
        if name in ("demo", "train", "cross-validate", "evaluate", "interactions"):
            p.add_argument("--quiet", action="store_true",
                           help="no progress output (on a terminal a live bar; in a log a line "
                                "every 10 %% with the time left)")
        if name in OUTPUTS:
            p.add_argument("--overwrite", action="store_true",
                           help="replace outputs that exist (never one of the inputs); "
                                "without it an existing output is refused")
        return p

    p = add("demo", "simulate a screen with artifacts, train cradle and sams, write a report")
    p.add_argument("--out", default="cradle_demo", help="output folder (default: cradle_demo)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=40,
                   help="training epochs per model (default 40, short for a demo)")
    p.add_argument("--cells", type=POSITIVE_INT, default=3000, help="simulated cells (default 3000)")
    p.add_argument("--genes", type=POSITIVE_INT, default=500, help="simulated genes (default 500)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_demo)

    p = add("qc", "label artifact cells by k·MAD QC rules and scrublet; print the thresholds")
    p.add_argument("input", help="input .h5ad with raw counts")
    p.add_argument("--out", required=True, help="output .h5ad (obs gains qc_* and artifact)")
    p.add_argument("--k", type=POSITIVE, default=3.0, help="MADs beyond the median (default 3)")
    p.add_argument("--column", action="append", metavar="CRITERION=OBS_COLUMN",
                   help="use an obs column for a criterion, e.g. low_total_counts=total_counts_transcriptome")
    p.add_argument("--no-doublets", action="store_true", help="skip scrublet")
    p.add_argument("--per-criterion", action="store_true", help="one artifact kind per criterion")
    p.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_qc)

    def add_training(name, help_text, out_help):
        p = add(name, help_text)
        p.add_argument("input", help="input .h5ad with raw counts")
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--perturbation-key", default=None,
                       help="obs column of condition labels (default perturbation)")
        p.add_argument("--control", default=None, help="label of control cells (default control)")
        p.add_argument("--config", default=None, help="YAML file with any of the options below")
        p.add_argument("--preset", choices=sorted(PRESET_NAMES), default=None,
                       help="start from a named set of settings: cradle-paper, the published "
                            "CRADLE-VAE's model, objective, guide, sizes and optimiser (the "
                            "options below and --config still change it; its ATEs: --basal prior)")
        p.add_argument("--qc-column", action="append", metavar="CRITERION=OBS_COLUMN",
                       help="QC criterion on an obs column (repeatable)")
        for key, (_, typ, default, help_text) in TRAIN_OPTIONS.items():
            flag = "--" + key.replace("_", "-")
            if typ is bool and default is True:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            elif typ is bool:
                p.add_argument(flag, action="store_const", const=True, default=None,
                               help=help_text)
            else:
                p.add_argument(flag, type=typ, default=None,
                               help=f"{help_text} (default {default})")
        return p

    p = add_training("train", "train a model on an AnnData screen and save the run folder",
                     "run folder to write")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (nothing of it is kept)")
    p.set_defaults(func=cmd_train)

    p = add_training("cross-validate", "score a training setting on validation cells of seen "
                     "conditions, every seen cell once (K-fold; test cells untouched)",
                     "output CSV, one row per fold")
    p.add_argument("--folds", type=_number(int, low=2), default=5,
                   help="folds, and trainings (default 5)")
    p.set_defaults(func=cmd_cross_validate)

    def run_cmd(name, help_text):
        p = add(name, help_text)
        p.add_argument("run", help="run folder written by `cradle-pyro train`")
        p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
        return p

    p = run_cmd("effects", "average treatment effects (perturbations × genes) from generated clean cells")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--perturbations", help='comma-separated, e.g. "A+B,C"')
    which.add_argument("--perturbations-file", metavar="FILE",
                       help="a text file of conditions, one per line (any label, commas too)")
    p.add_argument("--out", required=True, help="output CSV")
    add_estimator_arguments(p, "sampled")
    p.add_argument("--interval", type=MASS, default=0.9,
                   help="mass of the credible interval (default 0.9: 5%% and 95%% quantiles)")
    add_basal_argument(p)
    p.add_argument("--interval-kind", choices=["ate", "observed"], default="ate",
                   help="ate (default): credible interval of the population ATE, the estimand; "
                        "observed: predictive interval of the ATE as observed from finitely "
                        "many cells (the screen's own clean cells of each condition and of "
                        "control, or --observed-cells), for comparing with data")
    p.add_argument("--observed-cells", default=None, metavar="N,M",
                   help="with --interval-kind observed: cells of the condition and control cells")
    p.add_argument("--wide", action="store_true",
                   help="write posterior means only, perturbations × genes")
    p.set_defaults(func=cmd_effects)

    p = run_cmd("interactions", "posterior genetic interactions of pairs: ATE(A+B) − ATE(A) − "
                "ATE(B) per gene, and per pair its size, direction and probability")
    p.add_argument("--pairs", required=True,
                   help='"all" (every pair of the run\'s targets), comma-separated pairs, or a '
                        "file with one pair per line")
    p.add_argument("--out", required=True, help="output CSV, one row per pair, ranked")
    p.add_argument("--genes-out", default=None, help="also a CSV with one row per (pair, gene)")
    p.add_argument("--figure", default=None, help="also the ranked pairs with intervals (PNG)")
    p.add_argument("--tau", type=POSITIVE, default=0.2,
                   help="interaction size, relative to the additive prediction, that counts "
                        "as interacting (default 0.2)")
    add_estimator_arguments(p, "batched")
    p.add_argument("--interval", type=MASS, default=0.9, help="mass of the credible intervals")
    add_basal_argument(p)
    p.set_defaults(func=cmd_interactions)

    p = run_cmd("sample", "generate new cells under do(dosage=..., artifact=...)")
    p.add_argument("--perturbation", required=True, help='condition, e.g. "A+B" or control')
    p.add_argument("--n", type=POSITIVE_INT, default=200, help="number of cells")
    p.add_argument("--artifact", default="clean", help="clean, artifact, or an artifact kind")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=cmd_sample)

    p = run_cmd("predict", "predicted cells per condition for cell-eval (target_gene, "
                "non-targeting, log1p X), and the held-out truth beside them")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--perturbations", help='comma-separated, e.g. "A+B,C" (default: the '
                       "run's held-out conditions)")
    which.add_argument("--perturbations-file", metavar="FILE",
                       help="a text file of conditions, one per line")
    p.add_argument("--n", type=POSITIVE_INT, default=200, help="cells per condition (default 200)")
    p.add_argument("--baseline", choices=BASELINE_NAMES, default=None,
                   help="write this baseline's cells instead of the model's")
    p.add_argument("--observed", default=None,
                   help="also write the held-out truth (.h5ad) in the same layout")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=cmd_predict)

    p = run_cmd("counterfactual", "what these cells would look like under an intervention")
    p.add_argument("input", help=".h5ad with the cells (same genes as the run)")
    p.add_argument("--do", action="append", metavar="SITE=VALUE", help="artifact=clean, dosage=B, ...")
    p.add_argument("--num-samples", type=POSITIVE_INT, default=4,
                   help="posterior draws averaged (two or more add credible intervals)")
    add_abduct_from_argument(p)
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=cmd_counterfactual)

    p = run_cmd("evaluate", "metrics JSON, Markdown report and figures on held-out cells")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--compare", action="append", help="other run folders to evaluate beside it")
    p.add_argument("--split", default="test", help="which cells to evaluate on (default test)")
    add_twins_argument(p, "the report then says how far cleaning brought each group of "
                          "cells to its twins")
    add_draws_arguments(p)
    add_basal_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = run_cmd("artifacts", "posterior probability of each artifact cause per cell, beside "
                "the QC flags (runs trained with --artifact-state latent)")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--figure", default=None, help="also draw the posterior against the QC "
                   "metrics into this PNG")
    add_abduct_from_argument(p)
    add_twins_argument(p, "also clean every cell and print how far cleaning brought each "
                          "group to its twins")
    p.set_defaults(func=cmd_artifacts)

    p = run_cmd("embed", "latent representations of the training cells into obsm, for scanpy")
    p.add_argument("--out", required=True, help="output .h5ad with obsm X_cradle_basal, X_cradle_latent")
    p.add_argument("--umap", default=None, help="also draw UMAPs of both into this PNG")
    p.set_defaults(func=cmd_embed)

    p = run_cmd("diagnose", "ArviZ posterior diagnostics: netCDF, summary, PSIS k-hat, plots")
    p.add_argument("--out", required=True, help="output .nc (plots and tables beside it)")
    p.add_argument("--n-cells", type=POSITIVE_INT, default=200, help="cells in the predictive check")
    p.add_argument("--draws", type=POSITIVE_INT, default=100, help="posterior draws")
    p.set_defaults(func=cmd_diagnose)
    return parser


# command -> (the options naming its outputs, whether --out is a folder)
OUTPUTS = {"qc": (("out",), False), "cross-validate": (("out",), False),
           "effects": (("out",), False), "sample": (("out",), False),
           "predict": (("out", "observed"), False),
           "interactions": (("out", "genes_out", "figure"), False),
           "counterfactual": (("out",), False), "artifacts": (("out", "figure"), False),
           "embed": (("out", "umap"), False), "diagnose": (("out",), False),
           "evaluate": (("out",), True), "demo": (("out",), True)}


def _inputs(args) -> list:
    """Every file a command reads: its input, config, run folders and their training files."""
    paths = [Path(p) for p in (getattr(args, "input", None), getattr(args, "config", None)) if p]
    runs = [getattr(args, "run", None)] + list(getattr(args, "compare", None) or [])
    for run in filter(None, runs):
        run = Path(run)
        paths.append(run)
        if run.is_dir():
            paths += [p for p in run.rglob("*") if p.is_file()]
        with contextlib.suppress(Exception):  # a broken run is reported when it is loaded
            src = json.loads((run / "config.json").read_text())["data"]["path"]
            if src:
                paths.append(Path(src))
    return paths


def _check_outputs(args):
    """Refuse outputs that exist (without --overwrite) or that are one of the inputs."""
    names, folder = OUTPUTS[args.command]
    inputs = _inputs(args)
    chosen = []
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        is_folder = folder and name == "out"
        check_output(value, overwrite=args.overwrite, inputs=inputs, flag=flag, folder=is_folder)
        for other_flag, other in chosen:
            if os.path.realpath(other) == os.path.realpath(value):
                raise CradleInputError(f"{flag} and {other_flag} are both {value!r}; give two names")
        chosen.append((flag, value))
    for sibling in _siblings(args):
        check_output(sibling, overwrite=args.overwrite, inputs=inputs, flag="--out")


def _siblings(args) -> list:
    """Files a command writes beside its --out (diagnose: tables and figures)."""
    if args.command != "diagnose":
        return []
    from .diagnostics import sibling_paths

    return list(sibling_paths(args.out).values())


# what the library's messages call a Python argument, as the command line spells it
CLI_WORDS = {
    "(pass perturbation_key=...)": "(pass --perturbation-key)",
    "(pass control_label=...)": "(pass --control)",
    "(control_label=...)": "(--control)",
    "(perturbation_key=...)": "(--perturbation-key)",
    "(pass layer=None to use X)": "(leave out --layer to use X)",
    "non_integer_counts='round'": "--round-counts",
    "pass doublets=False": "pass --no-doublets",
    "pass combination_separator=": "pass --separator ",
    "(load_run(run, adata=...))": "(it is named in the run's config.json)",
    "pass --overwrite (overwrite=True)": "pass --overwrite",
}
_CONFIG_FIELD = re.compile(r"(?:TrainConfig|ModelConfig): (\w+)=")


def speak_cli(message: str, argv) -> str:
    """A library message in the words of the command line the user typed."""
    for python, cli in CLI_WORDS.items():
        message = message.replace(python, cli)

    def flag(match):
        name = match.group(1)
        option = "--" + name.replace("_", "-")
        if option in argv:
            return f"{option} "
        return f"{name}="
    return _CONFIG_FIELD.sub(flag, message, count=1)


def describe_os_error(err: OSError) -> str:
    """One line for what the operating system refused, naming the path and the fix."""
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list):
        first = err.args[0][0]  # (source, destination, reason)
        return f"cannot copy {first[0]!r}: {first[2]}; nothing was replaced"
    name = _users_name(err.filename) if err.filename else None
    what, fix = {
        errno.ENOSPC: ("the disk is full", "free space and run again (nothing was replaced)"),
        errno.EDQUOT: ("the disk quota is used up", "free space and run again"),
        errno.EACCES: ("permission denied", "choose a place you can write to, or fix its "
                                            "permissions"),
        errno.EPERM: ("not permitted", "choose a place you can write to"),
        errno.EROFS: ("the file system is read-only", "choose another place"),
        errno.ENOENT: ("not found", "check the path"),
        errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
        errno.EISDIR: ("it is a folder", "give a file name"),
    }.get(err.errno, (err.strerror or type(err).__name__, "check the path and run again"))
    return f"{what}: {str(name)!r}; {fix}" if name else f"{what}; {fix}"


def _users_name(path) -> str:
    """The path the user named for one that runs through a temporary sibling of ours."""
    parts = []
    for part in Path(str(path)).parts:
        if part.startswith(".") and TMP_MARK in part:  # .NAME.tmp-PID-RANDOM[SUFFIX]
            name, rest = part[1:].split(TMP_MARK, 1)
            part = name + (rest[rest.index("."):] if "." in rest else "")
        parts.append(part)
    return str(Path(*parts))


# third-party warnings that precede one of the library's own errors about the same thing
QUIETED = ("Observation names are not unique",  # anndata; refused: "obs names are not unique"
           "Detected pickle protocol")  # torch, reading a foreign file the loader then refuses


class Interrupted(Exception):
    """Ctrl-C, with what it left behind."""


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    prefix = f"cradle-pyro {args.command}: "
    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kw: f"{prefix}warning: {message}\n"
    try:
        with warnings.catch_warnings():
            for message in QUIETED:  # said better by the library's own one-line error
                warnings.filterwarnings("ignore", message=message)
            if args.command in OUTPUTS:
                _check_outputs(args)
            if getattr(args, "threads", None):
                torch.set_num_threads(args.threads)
            args.func(args)
    except (CradleInputError, FileNotFoundError) as err:
        text = str(err) if isinstance(err, CradleInputError) else describe_os_error(err)
        print(prefix + "error: " + speak_cli(text.replace("\n", " "), argv), file=sys.stderr)
        return 2
    except OSError as err:
        print(prefix + "error: " + describe_os_error(err), file=sys.stderr)
        return 2
    except Interrupted as err:
        print(prefix + str(err), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(prefix + "interrupted; no output was written or replaced", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their own setting
        warnings.formatwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
