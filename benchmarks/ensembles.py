"""Does an ensemble of runs (an equal mixture of their posteriors) answer better than one run?

Each seed trains ``--members`` runs with ``cradle-pyro train`` defaults that
differ only in their training seed (:func:`inference.ensembles.fit_ensemble`;
same cells, same split) and scores the first member alone (exactly the default
run) and the ensemble (:func:`inference.ensembles.ensemble_ate`, the same
total number of posterior draws shared among the members):

- simulator (3,000 × 500, default and CRISPRi-like, truth from 20,000 cells):
  ATE r, RMS error, slope and 90 % coverage against the true ATE, and the
  validation criterion;
- Norman: the validation criterion (model ATE against the clean validation
  cells' ATE of *seen* conditions) decides; held-out doubles (all five
  eligible, disjoint control, ceiling) are reported beside it, never used to
  choose.

Writes benchmarks/results/ensembles.json (or ``--out``).

    python benchmarks/ensembles.py [--screens simulator,crispri,norman] [--seeds 0,1,2] [--members 3]
"""

import numpy as np

from cradle_pyro import PerturbationData, simulate_screen
from inference import TrainConfig
from inference.ensembles import ensemble_ate, fit_ensemble
from inference.scoring import held_out_conditions, single_conditions
from gene_effects import RESULTS, SCREENS, held_out_scores, paired_main, validation_scores
from simulator_effects import recovery, truth_table

KINDS = ("single", "ensemble")


def simulator_seed(screen, seed, members, train=None) -> dict:
    adata = simulate_screen(seed=seed, n_cells=3000, n_genes=500, n_truth_cells=20000,
                            **SCREENS[screen])
    truth = truth_table(adata)
    data = PerturbationData.from_anndata(adata, doublets=False, seed=seed)
    runs = fit_ensemble(data, TrainConfig(seed=seed, progress=False, **(train or {})),
                        members=members)
    out = {}
    for kind, used in zip(KINDS, (runs[:1], runs)):
        post = ensemble_ate(used, data, list(truth.index), num_draws=100, n_cells=200, seed=seed)
        res = recovery(post, truth)
        res["coverage_90"] = res.pop("coverage")["0.9"]
        if screen == "crispri":
            ratio = np.array([post.mean.loc[g, g] / truth.loc[g, g]
                              for g in adata.uns["truth"]["target_gene"]])
            res["target_within_20pct"] = float(np.mean(np.abs(ratio - 1) <= 0.2))
        res.update(validation_scores(used, data, seed))
        out[kind] = res
    return out


def norman_seed(adata, seed, members, train=None) -> dict:
    data = PerturbationData.from_anndata(adata, "perturbation", "control",
                                         split="unseen-combinations", heldout_fraction=1.0, seed=seed)
    runs = fit_ensemble(data, TrainConfig(seed=seed, progress=False, **(train or {})),
                        members=members)
    test, singles = held_out_conditions(data), single_conditions(data)
    out = {}
    for kind, used in zip(KINDS, (runs[:1], runs)):
        res = validation_scores(used, data, seed)
        ate = ensemble_ate(used, data, test + singles, seed=seed).mean
        res.update(held_out_scores(ate, data, test, singles, seed))
        out[kind] = res
    return out


def main():
    paired_main(__doc__, KINDS, RESULTS / "ensembles.json",
                lambda screen, seed, args, train, adata: (
                    norman_seed(adata, seed, args.members, train) if screen == "norman"
                    else simulator_seed(screen, seed, args.members, train)),
                lambda args: f"cradle-pyro train defaults; {args.members} members per seed "
                             "(training seeds seed, seed + 1, ...); 'single' is the first member "
                             f"alone; training {args.train_kw}",
                {"--members": dict(type=int, default=3)})


if __name__ == "__main__":
    main()
