"""Does an ensemble of runs (an equal mixture of their posteriors) answer better than one run?

Each seed trains ``--members`` runs with ``cradle-pyro train`` defaults that
differ only in their training seed (:func:`cradle_pyro.inference.ensembles.fit_ensemble`;
same cells, same split) and scores the first member alone (exactly the default
run) and the ensemble (:func:`cradle_pyro.inference.ensembles.ensemble_ate`, the same
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

from cradle_pyro.inference import TrainConfig
from cradle_pyro.inference.ensembles import ensemble_ate, fit_ensemble
from cradle_pyro.inference.scoring import held_out_conditions, single_conditions
from gene_effects import (RESULTS, held_out_scores, norman_data, paired_main, simulated,
                          simulator_scores, validation_scores)

KINDS = ("single", "ensemble")


def simulator_seed(screen, seed, members, train=None) -> dict:
    adata, truth, data = simulated(screen, seed, n_truth_cells=20000)
    runs = fit_ensemble(data, TrainConfig(seed=seed, progress=False, **(train or {})),
                        members=members)
    out = {}
    for kind, used in zip(KINDS, (runs[:1], runs)):
        post = ensemble_ate(used, data, list(truth.index), num_draws=100, n_cells=200, seed=seed)
        res = simulator_scores(post, truth, adata, screen)
        res.update(validation_scores(used, data, seed))
        out[kind] = res
    return out


def norman_seed(adata, seed, members, train=None) -> dict:
    data = norman_data(adata, seed)
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
