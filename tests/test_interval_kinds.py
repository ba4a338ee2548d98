"""Which interval is which: the population ATE's credible interval, or the predictive
interval of an ATE observed from finitely many cells."""

import numpy as np
import pytest

from cradle_pyro import PerturbationData
from cradle_pyro.inference import TrainConfig, fit
from cradle_pyro.inference.effects import posterior_ate


@pytest.fixture(scope="module")
def trained(small_screen):
    data = PerturbationData.from_anndata(small_screen, doublets=False)
    return fit(data, TrainConfig(epochs=5, num_particles=1, progress=False)), data


def test_observed_interval_is_wider_for_fewer_cells_and_centred_on_the_same_ate(trained):
    run, data = trained
    kw = dict(num_draws=60, n_cells=200, seed=3)
    ate = posterior_ate(run.model, run.guide, data, ["P0"], **kw)
    few = posterior_ate(run.model, run.guide, data, ["P0"], kind="observed",
                        observed_cells={"P0": (10, 10)}, **kw)
    many = posterior_ate(run.model, run.guide, data, ["P0"], kind="observed",
                         observed_cells={"P0": (150, 150)}, **kw)
    width = lambda p: float((p.upper - p.lower).to_numpy().mean())  # noqa: E731
    assert width(ate) < width(many) < width(few)
    # the same estimand underneath: observed means track the population ATE
    r = np.corrcoef(ate.mean.to_numpy().ravel(), many.mean.to_numpy().ravel())[0, 1]
    assert r > 0.9, r
    # sampling noise of 10 + 10 cells: about sqrt(2/10) of a cell's sd, far above the ATE's
    assert width(few) > 2 * width(ate)


def test_observed_kind_needs_the_cell_counts(trained):
    run, data = trained
    with pytest.raises(ValueError, match="observed_cells"):
        posterior_ate(run.model, run.guide, data, ["P0"], kind="observed", num_draws=5,
                      n_cells=10)
    with pytest.raises(ValueError, match="kind="):
        posterior_ate(run.model, run.guide, data, ["P0"], kind="predictive", num_draws=5,
                      n_cells=10)
