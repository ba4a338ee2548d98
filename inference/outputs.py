"""Writing outputs without destroying anything.

Two rules hold for every file the library writes:

- **Refuse, don't replace.** :func:`check_output` refuses a path that exists
  unless ``overwrite`` is given, and refuses to write over any of the
  command's own inputs even then (paths are compared after resolving
  symlinks, so a link to the input is the input).
- **Old file or new file, never half a file.** :func:`atomic_file` hands out a
  temporary sibling (same folder, same suffix, so writers that pick a format
  from the suffix still do) and renames it into place only once the writer
  has finished and the bytes are on disk. A kill, a full disk or an exception
  leaves the old file (or none) and no temporary.

Example
-------
>>> import tempfile, pandas as pd
>>> out = Path(tempfile.mkdtemp()) / "table.csv"
>>> write_csv(pd.DataFrame({"a": [1, 2]}), out, index=False)
>>> out.read_text().splitlines()
['a', '1', '2']
>>> check_output(out)
Traceback (most recent call last):
...
cradle_pyro.errors.CradleInputError: --out ... exists; pass --overwrite to replace it or choose another name
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from cradle_pyro.errors import CradleInputError

TMP_MARK = ".tmp-"  # temporary siblings are named ``.NAME.tmp-<pid>-<random>SUFFIX``


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path, *, overwrite: bool = False, inputs=(), flag: str = "--out",
                 folder: bool = False) -> Path:
    """Where an output may go: the resolved path, or a :class:`CradleInputError`.

    Parameters
    ----------
    path
        The output the user named (a file, or a folder with ``folder=True``).
    overwrite
        Whether an existing output may be replaced.
    inputs
        Paths the command reads; the output may never be one of them (nor a
        folder holding one, for a folder output).
    flag
        How the user named the output, for the message (``--out``, ``--figure``).
    """
    given = Path(path)
    resolved = Path(os.path.realpath(given))
    for source in inputs:
        source = Path(source)
        inside = folder and Path(os.path.realpath(source)).is_relative_to(resolved)
        if _same_file(resolved, source) or inside:
            raise CradleInputError(
                f"{flag} {str(given)!r} is the input {str(source)!r}; choose another name "
                "(an input is never written over, not even with --overwrite)")
    if not folder and resolved.is_dir():
        raise CradleInputError(f"{flag} {str(given)!r} is a folder; give a file name")
    if folder and resolved.exists() and not resolved.is_dir():
        raise CradleInputError(f"{flag} {str(given)!r} is a file; give a folder")
    if not resolved.parent.exists():
        raise CradleInputError(f"the folder {str(given.parent)!r} for {flag} does not exist; "
                               "create it first")
    occupied = resolved.exists() and (not folder or any(resolved.iterdir()))
    if occupied and not overwrite:
        raise CradleInputError(f"{flag} {str(given)!r} exists; pass --overwrite to replace it "
                               "or choose another name")
    return resolved


def temporary_sibling(path: Path) -> Path:
    """A fresh name beside ``path`` with the same suffix (writers pick formats by suffix)."""
    path = Path(path)
    return path.parent / f".{path.stem}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"


def _fsync(path: Path):
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` when the block ends well.

    A symlink at ``path`` is replaced by the file (its target is left alone).

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "note.txt"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        try:
            yield tmp
        except OSError as err:
            if err.filename is None or Path(str(err.filename)) == tmp:
                err.filename = str(path)  # the user's name, not the temporary's
            raise
        if not tmp.exists():
            raise OSError(f"the writer left no file for {str(path)!r}")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path, text: str):
    """``Path.write_text``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_csv(table, path, **kwargs):
    """``DataFrame.to_csv``, atomically."""
    with atomic_file(path) as tmp:
        table.to_csv(tmp, **kwargs)


def write_h5ad(adata, path):
    """``AnnData.write_h5ad``, atomically."""
    with atomic_file(path) as tmp:
        adata.write_h5ad(tmp)


def save_figure(fig, path, **kwargs):
    """``Figure.savefig``, atomically (the format from the suffix of ``path``)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, **kwargs)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path) -> list:
    """Delete the temporary siblings of ``path`` that a killed writer left; return their names.

    Only files whose writer (the pid in the name) is gone are touched.
    """
    path = Path(path)
    gone = []
    for p in path.parent.glob(f".{path.stem}{TMP_MARK}*{path.suffix}"):
        try:
            pid = int(p.name[len(f".{path.stem}{TMP_MARK}"):].split("-")[0])
        except ValueError:
            continue
        if p.is_file() and not p.is_symlink() and pid != os.getpid() and not pid_alive(pid):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


__all__ = ["check_output", "atomic_file", "write_text", "write_csv", "write_h5ad",
           "save_figure", "temporary_sibling", "remove_stale_temporaries"]
