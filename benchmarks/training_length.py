"""How long to train, and with how many particles: effect accuracy against interval width.

Where the truth is known (simulated 3,000 × 500 screens, :data:`gene_effects.SCREENS`:
the default one and the CRISPRi-like one), one ``cradle`` per setting at the
``cradle-pyro train`` defaults except the training length (``epochs``) and the
Monte Carlo particles of the ELBO (``num_particles``, 5 by default):

- ``p5_e40``, ``p5_e100`` (the defaults when this ran), ``p5_e200`` (the defaults since):
  5 particles, 40 / 100 / 200 epochs;
- ``p1_e100``, ``p1_e300``: 1 particle, 100 / 300 epochs (a step costs less).

Per screen, seed and setting: ATE r, RMS error and slopes against the truth,
90 % coverage of the credible intervals, CRISPRi targets within 20 %, the
validation criterion of seen conditions, training seconds. The question: are the
intervals too narrow because training has not converged, or because the
converged mean-field posterior (with a point-estimate decoder) is too narrow?

    python benchmarks/training_length.py --screens simulator,crispri --seeds 0,1,2
"""

import time

from cradle_pyro import ModelConfig
from gene_effects import RESULTS, paired_main, run_scores, simulated
from cradle_pyro.inference import TrainConfig, fit

# explicit, so that a rerun measures the same settings whatever the defaults are
SETTINGS = {"p5_e40": dict(epochs=40, num_particles=5), "p5_e100": dict(epochs=100, num_particles=5),
            "p5_e200": dict(epochs=200, num_particles=5), "p1_e100": dict(epochs=100, num_particles=1),
            "p1_e300": dict(epochs=300, num_particles=1)}


def score(screen, seed, args, train, adata):
    sim, truth, data = simulated(screen, seed)
    out = {}
    for kind, setting in SETTINGS.items():
        t0 = time.time()
        run = fit(data, TrainConfig(seed=seed, progress=False, **{**train, **setting}),
                  ModelConfig())
        seconds = time.time() - t0
        out[kind] = {**run_scores(run, data, truth, sim, screen, seed),
                     "train_seconds": round(seconds, 1)}
    return out


if __name__ == "__main__":
    paired_main(__doc__, tuple(SETTINGS), RESULTS / "training_length.json", score,
                lambda args: "cradle-pyro train defaults but epochs and num_particles "
                             f"({SETTINGS}); training {args.train_kw}")
