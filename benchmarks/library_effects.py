"""The library as a mediator (``ModelConfig.library_effects``): off against on, where truth is known.

A perturbation that changes how much RNA a cell holds changes every low-count
gene's normalised expression (Norman: KLF1 cells' median library is 188
against 106 for control cells). With the library exogenous, an ATE is taken at
the libraries cells had; with ``library_effects`` each perturbation's
log-library shift is learnt and an intervention moves each cell's library with
it. Three simulated screens (3,000 × 500, :data:`gene_effects.SCREENS`): the
default one and the CRISPRi-like one, whose libraries do not depend on the
perturbation (the switch must not hurt there), and ``library``, whose singles
shift the library by N(0, 0.5) in natural log (combinations add). Per screen and
seed, both settings: ATE recovery against the truth (r, RMS error, slopes, 90 %
coverage, CRISPRi targets within 20 %) and the validation criterion of seen
conditions. Norman is judged by five-fold cross-validation
(``cross_validation.py``, setting ``library_effects``).

    python benchmarks/library_effects.py --screens simulator,crispri,library --seeds 0,1,2
"""

from cradle_pyro import ModelConfig
from gene_effects import RESULTS, paired_main, run_scores, simulated
from cradle_pyro.inference import TrainConfig, fit

KINDS = ("off", "on")


def score(screen, seed, args, train, adata):
    sim, truth, data = simulated(screen, seed)
    out = {}
    for kind in KINDS:
        run = fit(data, TrainConfig(seed=seed, progress=False, **train),
                  ModelConfig(library_effects=kind == "on"))
        out[kind] = run_scores(run, data, truth, sim, screen, seed)
    return out


if __name__ == "__main__":
    paired_main(__doc__, KINDS, RESULTS / "library_effects.json", score,
                lambda args: "cradle-pyro train defaults; library_effects off / on; "
                             f"training {args.train_kw}")
