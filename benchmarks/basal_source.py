"""Which cells should a model ATE average over: new cells from the prior, or the screen's own?

An ATE is a mean over a population of cells. ``posterior_ate(basal="prior")``
makes new cells with basal states from the model's prior N(0, I);
``basal="abducted"`` takes clean training cells, draws each one's basal state
from the guide's q(basal | x) and puts that same cell under each condition
(abduction, action, prediction). Through a nonlinear decoder the two differ
wherever the prior is not the population (real basal states cluster).

Each seed trains once with ``cradle-pyro train`` defaults and scores both
sources on the same trained model:

- simulator (3,000 × 500, default and CRISPRi-like): ATE r, slope, RMS error
  and 90 % coverage against the true ATE (20,000 truth cells, so the truth's
  own noise, rms ≈ 0.05 at 1,000 cells, stays out of the coverage);
- Norman: the validation criterion (:class:`cradle_pyro.inference.selection.ValidationEffects`:
  model ATE against the clean validation cells' ATE of *seen* conditions) decides;
  held-out doubles (all five eligible, disjoint control, ceiling) are reported
  beside it, never used to choose.

Writes benchmarks/results/basal_source.json.

    python benchmarks/basal_source.py [--screens simulator,crispri,norman] [--seeds 0,1,2]
        [--train-kw '{"independence": 10}' --out results/basal_source_sim_independence10.json]
"""

from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import BASAL_SOURCES, posterior_ate
from cradle_pyro.inference.scoring import held_out_conditions, single_conditions
from gene_effects import (RESULTS, held_out_scores, norman_data, paired_main, simulated,
                          simulator_scores, validation_scores)


def simulator_seed(screen, seed, train=None) -> dict:
    adata, truth, data = simulated(screen, seed, n_truth_cells=20000)
    run = fit(data, TrainConfig(seed=seed, progress=False, **(train or {})))
    out = {}
    for basal in BASAL_SOURCES:
        post = posterior_ate(run.model, run.guide, data, list(truth.index), num_draws=100,
                             n_cells=200, seed=seed, basal=basal)
        res = simulator_scores(post, truth, adata, screen)
        res.update(validation_scores(run, data, seed, basal))
        out[basal] = res
    return out


def norman_seed(adata, seed, train=None) -> dict:
    data = norman_data(adata, seed)
    run = fit(data, TrainConfig(seed=seed, progress=False, **(train or {})))
    test, singles = held_out_conditions(data), single_conditions(data)
    out = {}
    for basal in BASAL_SOURCES:
        res = validation_scores(run, data, seed, basal)
        ate = posterior_ate(run.model, run.guide, data, test + singles, seed=seed, basal=basal).mean
        res.update(held_out_scores(ate, data, test, singles, seed))
        out[basal] = res
    return out


def main():
    paired_main(__doc__, BASAL_SOURCES, RESULTS / "basal_source.json",
                lambda screen, seed, args, train, adata: (
                    norman_seed(adata, seed, train) if screen == "norman"
                    else simulator_seed(screen, seed, train)),
                lambda args: "cradle-pyro train defaults; one trained model per screen and seed, "
                             f"scored with both basal sources; training {args.train_kw}")


if __name__ == "__main__":
    main()
