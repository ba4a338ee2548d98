"""Shared fixtures: small simulated screens and the real files in ../shared/data."""

import os
from pathlib import Path

import pytest

from cradle_pyro import simulate_screen

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NORMAN = SHARED_DATA / "norman2019_k562_crispra_subset.h5ad"
PAPALEXI = SHARED_DATA / "papalexi2021_thp1_eccite_lowmoi.h5ad"


def shared_file(path: Path) -> Path:
    """The path of a shared data file; skip (locally) or fail (in CI) where it is absent."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have ../shared/data beside the clone")
        pytest.skip(f"{path} absent: the real data folder ../shared/data is not beside this clone")
    return path


@pytest.fixture(scope="session")
def small_screen():
    """1,200 cells × 150 genes, 6 singles, 3 combinations, with artifacts."""
    return simulate_screen(n_cells=1200, n_genes=150, n_singles=6, n_combinations=3,
                           n_interacting=1, latent_dim=6, n_truth_cells=300, seed=3)


@pytest.fixture(scope="session")
def standard_screen():
    """The default 5,000 × 1,000 simulated screen."""
    return simulate_screen(seed=0)
