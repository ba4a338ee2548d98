"""One validation layer for every entry point: types and ranges of settings.

The configuration dataclasses (:class:`~cradle_pyro.config.ModelConfig`,
``inference.TrainConfig``) check their fields here on construction, so the
library, the command line and YAML files all meet the same rules, and every
refusal is one :class:`~cradle_pyro.errors.CradleInputError` line naming the
setting, the value and what is allowed.

Example
-------
>>> check_fields({"epochs": 0}, {"epochs": ("int", 1, None)}, "TrainConfig")
Traceback (most recent call last):
...
cradle_pyro.errors.CradleInputError: TrainConfig: epochs=0 must be at least 1
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .errors import CradleInputError


def _describe(value) -> str:
    return f"{value!r} (a {type(value).__name__})" if isinstance(value, str) else repr(value)


def check_value(name: str, value, kind: str, low=None, high=None, owner: str = "",
                low_open: bool = False, high_open: bool = False, optional: bool = False):
    """Check one setting; ``kind`` is ``"int"``, ``"float"`` or ``"bool"``.

    Integers are accepted for floats; booleans are never numbers, and a string
    is never a boolean (YAML's ``"false"`` in quotes is a string, and truthy).
    """
    where = f"{owner}: " if owner else ""
    if value is None and optional:
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise CradleInputError(f"{where}{name}={_describe(value)} must be true or false")
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and not (is_number and float(value).is_integer()):
        raise CradleInputError(f"{where}{name}={_describe(value)} must be a whole number")
    if kind == "float" and not is_number:
        raise CradleInputError(f"{where}{name}={_describe(value)} must be a number")
    if not math.isfinite(float(value)):
        raise CradleInputError(f"{where}{name}={value!r} must be finite")
    if low is not None and (value <= low if low_open else value < low):
        word = "greater than" if low_open else "at least"
        raise CradleInputError(f"{where}{name}={value!r} must be {word} {low}")
    if high is not None and (value >= high if high_open else value > high):
        word = "less than" if high_open else "at most"
        raise CradleInputError(f"{where}{name}={value!r} must be {word} {high}")


def check_fields(values: dict, rules: dict, owner: str):
    """Check ``values[name]`` against ``rules[name] = (kind, low, high[, options])``.

    ``options`` is a dict of :func:`check_value` keywords (``low_open``,
    ``high_open``, ``optional``).
    """
    for name, rule in rules.items():
        if name in values:
            kind, low, high, *extra = rule
            check_value(name, values[name], kind, low, high, owner, **(extra[0] if extra else {}))


CHUNK_VALUES = 10_000_000  # stored values per slice of whole-matrix checks
CHUNK_ROWS = 50_000        # cells per chunk of an on-disk matrix


def check_counts(X, non_integer_counts: str) -> bool:
    """Raise on NaN, negative or (unless rounding) non-integer counts; True if rounding is due.

    An on-disk dataset (backed ``.h5ad``) is checked chunk by chunk of cells.
    """
    if hasattr(X, "to_memory") and len(X.shape) == 2:
        rounded = False
        for start in range(0, X.shape[0], CHUNK_ROWS):
            rounded |= check_counts(sp.csr_matrix(X[start:start + CHUNK_ROWS]), non_integer_counts)
        return rounded
    mat = sp.csr_matrix(in_memory(X))
    if not np.issubdtype(mat.dtype, np.number):
        raise CradleInputError(f"counts have dtype {mat.dtype}; pass numeric raw UMI counts")

    def n_cells_with(mask_values):
        m = mat.copy()
        m.data = mask_values.astype(np.float32)
        m.eliminate_zeros()
        return int((m.getnnz(axis=1) > 0).sum())

    def any_entry(test):
        # in slices of the stored values: temporaries bounded by the slice
        return any(test(mat.data[i:i + CHUNK_VALUES]).any()
                   for i in range(0, len(mat.data), CHUNK_VALUES))

    if any_entry(lambda v: ~np.isfinite(v)):
        bad = ~np.isfinite(mat.data)
        kind = "NaN" if np.isnan(mat.data).any() else "infinite values"
        raise CradleInputError(
            f"counts hold {kind} in {n_cells_with(bad)} cells; "
            "remove those cells or fill the values"
        )
    if any_entry(lambda v: v < 0):
        raise CradleInputError(
            f"counts hold negative values in {n_cells_with(mat.data < 0)} cells; "
            "pass raw UMI counts (X or a layer), not normalised or scaled values"
        )
    if any_entry(lambda v: v > FLOAT32_EXACT):
        import warnings

        big = mat.data > FLOAT32_EXACT
        warnings.warn(
            f"counts above 2^24 = {FLOAT32_EXACT:,} in {n_cells_with(big)} cells (largest "
            f"{mat.data.max():.4g}): float32 cannot hold such integers exactly, and no UMI "
            "count is that large; are these raw UMI counts?", UserWarning, stacklevel=3)
    if not any_entry(lambda v: v != np.round(v)):
        return False
    frac = mat.data != np.round(mat.data)
    if frac.any():
        n = n_cells_with(frac)
        if non_integer_counts == "error":
            raise CradleInputError(
                f"counts hold non-integer values in {n} cells ({int(frac.sum())} entries); "
                "pass raw counts, or non_integer_counts='round' to round them"
            )
        if non_integer_counts != "round":
            raise CradleInputError(
                f"non_integer_counts={non_integer_counts!r}; use 'error' or 'round'"
            )
    return bool(frac.any())


FLOAT32_EXACT = 2 ** 24  # the largest integer float32 holds with all integers below it


def in_memory(X):
    """A count matrix in memory: backed AnnData's datasets are read (as CSR when sparse).

    ``anndata.read_h5ad(path, backed="r")`` gives ``X`` as an on-disk dataset;
    the library keeps counts as CSR in memory, so it is read once here.
    """
    if hasattr(X, "to_memory"):  # anndata's backed sparse datasets
        return X.to_memory()
    if type(X).__module__.startswith("h5py"):  # backed dense
        return sp.csr_matrix(X[()])
    return X


def check_shape_and_names(adata):
    """A non-empty AnnData with unique cell and gene names."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise CradleInputError(
            f"the dataset is empty ({adata.n_obs} cells × {adata.n_vars} genes)"
        )
    for axis, names in (("obs", adata.obs_names), ("var", adata.var_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:3].tolist()
            raise CradleInputError(
                f"{axis} names are not unique (e.g. {dup}); call adata.{axis}_names_make_unique()"
            )


def check_choice(name: str, value, choices, owner: str = ""):
    """``value`` must be one of ``choices``."""
    if value not in choices:
        where = f"{owner}: " if owner else ""
        raise CradleInputError(f"{where}{name}={_describe(value)}; choose one of {list(choices)}")


__all__ = ["check_choice", "check_counts", "in_memory", "check_fields", "check_shape_and_names", "check_value"]
