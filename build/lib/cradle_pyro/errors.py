"""Exceptions raised for bad input.

Every message names what was wrong (the column, the value, how many cells) and
how to fix it; the command line prints them as one line.
"""


class CradleInputError(ValueError):
    """Input data or arguments the library cannot use as given."""


class TrainingDiverged(CradleInputError):
    """Training met a numerical fault it could not recover from (nothing was saved)."""
