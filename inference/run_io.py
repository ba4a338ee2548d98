"""A trained run is a folder.

::

    RUN/
      config.json        model, training and data configuration (resolved)
      model.pt guide.pt  state dicts (tensors only; loaded with weights_only=True)
      history.csv        loss history per epoch
      qc_thresholds.json QC rules learnt on the training data (when QC labelled)
      names.json         genes, perturbations, artifact kinds, conditions
      cells.csv          per training-file cell: split and artifact labels used

Loading never unpickles arbitrary objects. The data are rebuilt from the
AnnData file named in ``config.json`` (or one passed in) with the saved splits
and artifact labels, so a loaded run sees exactly the cells it was trained on;
``config.json`` holds a fingerprint of the training data (shape, gene, cell and
condition names, a checksum of the counts) and loading refuses an AnnData
whose training cells do not match it, naming what changed.

Saving is atomic per folder: the run is written to a temporary sibling
(``.RUN.tmp-*``), the old folder (if any) is moved aside and the new one
renamed into place, so the folder is always either the old run or the new one
(an interruption between the two renames leaves the old run aside, and the
next save or load puts it back). A folder holding a run is replaced only with
``overwrite=True``; nothing of the old run survives the replacement; a lock
file (``.RUN.lock``) refuses a second writer while a training writes.

Example
-------
>>> import tempfile
>>> from cradle_pyro import simulate_screen
>>> from cradle_pyro.inference import TrainConfig
>>> adata = simulate_screen(300, 60, seed=0)
>>> path = tempfile.mkdtemp() + "/screen.h5ad"
>>> adata.write_h5ad(path)
>>> run = train_from_file(path, TrainConfig(epochs=1, progress=False), doublets=False)
>>> save_run(run, tempfile.mkdtemp() + "/run") .name
'run'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cradle_pyro.config import ModelConfig
from cradle_pyro.data import PerturbationData
from cradle_pyro.errors import CradleInputError
from cradle_pyro.guides import make_guide
from cradle_pyro.model import CradleModel, target_gene_index
from cradle_pyro.qc import QCThresholds

from .ensembles import fit_ensemble
from .outputs import pid_alive, write_text
from .train import TrainConfig, TrainedRun, atomic_save, fit, load_tensors

SPLIT_COLUMN = "cradle_split"
LIBRARY_COLUMN = "cradle_library"
CONDITION_COLUMN = "cradle_condition"  # what each cell received: moves its library under do()
ARTIFACT_PREFIX = "cradle_artifact_"
QC_PREFIX = "cradle_qc_"  # standardised QC covariates of a latent artifact state
FLAG_PREFIX = "cradle_flag_"  # QC flags per criterion, its evidence


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict ...:"
        return lines[1][:200]
    return lines[0][:200] if lines else type(err).__name__


DAMAGED = ("the run folder is damaged or was edited by hand; restore it from a copy "
           "or train it again")


def read_run_json(path: Path):
    """A run folder's JSON file, or one line saying which file is missing or broken."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CradleInputError(f"{str(path)!r} is missing; {DAMAGED}") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CradleInputError(f"{str(path)!r} is not valid JSON ({_first_line(err)}); "
                               f"{DAMAGED}") from None


def read_run_csv(path: Path, **kwargs) -> pd.DataFrame:
    """A run folder's CSV table, or one line saying which file is missing or broken."""
    path = Path(path)
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise CradleInputError(f"{str(path)!r} is missing; {DAMAGED}") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise CradleInputError(f"{str(path)!r} cannot be read as a table ({_first_line(err)}); "
                               f"{DAMAGED}") from None


class _DamagedRun:
    """Turn what a damaged or hand-edited run folder raises into one line naming the folder."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is None or issubclass(kind, CradleInputError):
            return False
        if issubclass(kind, (KeyError, TypeError, RuntimeError, ValueError, IndexError)):
            what = (f"a key {err} is missing" if isinstance(err, KeyError)
                    else _first_line(err))
            raise CradleInputError(f"the run in {str(self.run_dir)!r} does not hold together "
                                   f"({what}); {DAMAGED}") from None
        return False


def read_anndata(path, backed: bool = False) -> ad.AnnData:
    """``anndata.read_h5ad`` with one clear error for a missing, foreign or truncated file.

    ``backed=True`` leaves the matrices in the file (``backed="r"``).
    """
    path = Path(path)
    if not path.exists():
        raise CradleInputError(f"AnnData file {str(path)!r} not found")
    if path.is_dir():
        raise CradleInputError(f"{str(path)!r} is a folder; give an .h5ad file")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as err:  # h5py / anndata raise many kinds for foreign or cut files
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        if "unable to lock file" in str(err).lower():
            raise CradleInputError(f"{str(path)!r} is held open for writing by another process "
                                   "(HDF5 file lock); wait until it is closed") from None
        raise CradleInputError(f"cannot read {str(path)!r} as AnnData (.h5ad): {reason}; "
                               "is it an .h5ad file written completely?") from None


def load_data(path, data_args: dict) -> PerturbationData:
    """Read an AnnData file into PerturbationData (clear error if it is missing)."""
    return PerturbationData.from_anndata(read_anndata(path), **data_args)


def data_fingerprint(adata: ad.AnnData, obs_names=None, perturbation_key=None, layer=None) -> dict:
    """What identifies the training data: shape, names, a checksum of the counts.

    ``obs_names`` restricts to the training cells (in that order).
    """
    if obs_names is not None and list(map(str, obs_names)) != list(map(str, adata.obs_names)):
        adata = adata[pd.Index(obs_names)]
    X = adata.X if layer is None else adata.layers[layer]
    if hasattr(X, "to_memory"):  # on disk: the same digest, streamed in chunks of cells
        counts = _streamed_counts_digest(X)
    else:
        X = sp.csr_matrix(X)
        X.sort_indices()
        counts = hashlib.sha1()
        for part in (X.indptr.astype(np.int64), X.indices.astype(np.int64),
                     np.asarray(X.data, dtype=np.float64)):
            counts.update(np.ascontiguousarray(part).tobytes())
    fp = {"shape": [int(adata.n_obs), int(adata.n_vars)],
          "genes": _digest(adata.var_names), "cells": _digest(adata.obs_names),
          "counts": counts.hexdigest()}
    if perturbation_key is not None and perturbation_key in adata.obs:
        fp["conditions"] = _digest(adata.obs[perturbation_key].astype(str))
    return fp


def _streamed_counts_digest(X, chunk: int = 50_000):
    """SHA-1 of indptr, indices and data of a row-sliceable CSR dataset, read in chunks
    (three passes, so the bytes come in the order the in-memory digest hashes them)."""
    counts = hashlib.sha1()
    n = X.shape[0]

    def chunks():
        for start in range(0, n, chunk):
            c = sp.csr_matrix(X[start:min(start + chunk, n)])
            c.sort_indices()
            yield c

    counts.update(np.zeros(1, dtype=np.int64).tobytes())
    offset = 0
    for c in chunks():
        counts.update((c.indptr[1:].astype(np.int64) + offset).tobytes())
        offset += int(c.indptr[-1])
    for c in chunks():
        counts.update(c.indices.astype(np.int64).tobytes())
    for c in chunks():
        counts.update(np.asarray(c.data, dtype=np.float64).tobytes())
    return counts


def _digest(values) -> str:
    return hashlib.sha1("\x1f".join(map(str, values)).encode()).hexdigest()


_FINGERPRINT_WORDS = {"shape": "the number of cells or genes", "genes": "the gene names or their order",
                      "cells": "the cell names or their order", "counts": "the counts",
                      "conditions": "the perturbation labels"}


def check_fingerprint(saved: dict, adata: ad.AnnData, obs_names, perturbation_key, layer, source):
    """Refuse training data that differ from what the run was trained on."""
    now = data_fingerprint(adata, obs_names, perturbation_key, layer)
    changed = [k for k in saved if k in now and saved[k] != now[k]]
    if changed:
        raise CradleInputError(
            f"{source} is not the data this run was trained on: "
            f"{', '.join(_FINGERPRINT_WORDS.get(k, k) for k in changed)} changed; "
            "pass the original training AnnData (load_run(run, adata=...)) or retrain")


def train_from_file(path, train_config=None, model_config=None, checkpoint_dir=None,
                    resume=False, **data_args) -> TrainedRun:
    """Load ``path`` into PerturbationData with ``data_args`` and :func:`fit` it."""
    adata = read_anndata(path, backed=bool(data_args.get("counts_on_disk")))
    data = PerturbationData.from_anndata(adata, **data_args)
    run = fit(data, train_config, model_config, checkpoint_dir=checkpoint_dir, resume=resume)
    run.data_source = {"path": str(Path(path).resolve()), "args": data_args,
                       "fingerprint": data_fingerprint(adata, data.obs_names,
                                                       data_args.get("perturbation_key", "perturbation"),
                                                       data_args.get("layer"))}
    return run


class RunFolderLock:
    """An exclusive lock on a run folder (``.RUN.lock`` beside it), stale locks reclaimed."""

    def __init__(self, path):
        path = Path(path)
        self.file = path.parent / f".{path.name}.lock"

    def __enter__(self):
        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._holder_alive():
                    raise CradleInputError(
                        f"another process (pid {self.file.read_text().strip()}) is writing "
                        f"{str(self.file.parent / self.file.name[1:-5])!r}; wait for it or "
                        "choose another --out") from None
                self.file.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise CradleInputError(f"cannot take the lock {str(self.file)!r}")

    def _holder_alive(self) -> bool:
        try:
            pid = int(self.file.read_text().strip())
        except (OSError, ValueError):
            return False
        return pid == os.getpid() or pid_alive(pid)

    def __exit__(self, *exc):
        self.file.unlink(missing_ok=True)


def recover_run_folder(path) -> None:
    """Put back a run that an interrupted save left aside (``.RUN.old-*``)."""
    path = Path(path)
    if path.exists():
        for old in path.parent.glob(f".{path.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds:
        os.rename(olds[-1], path)


def check_output_folder(path, overwrite: bool = False, resume: bool = False) -> Path:
    """Where a run may be written: refuse files, foreign folders and other runs."""
    path = Path(path)
    recover_run_folder(path)
    if path.exists() and not path.is_dir():
        raise CradleInputError(f"--out {str(path)!r} is a file; give a folder for the run")
    if not path.parent.exists():
        raise CradleInputError(f"the folder {str(path.parent)!r} for --out does not exist; "
                               "create it first")
    if path.exists() and any(path.iterdir()):
        # only a run folder is ever replaced: other files in it refuse even --overwrite
        foreign = [p.name for p in path.iterdir() if p.name not in RUN_FILES]
        if foreign:
            raise CradleInputError(f"{str(path)!r} holds other files ({foreign[:3]}); "
                                   "choose an empty or new folder for the run")
        if (path / "config.json").exists() and not resume and not overwrite:
            raise CradleInputError(f"{str(path)!r} holds a trained run; pass --overwrite "
                                   "(overwrite=True) to replace it or choose another --out")
        interrupted = (path / "checkpoints").exists() and not (path / "config.json").exists()
        if interrupted and not resume and not overwrite:
            raise CradleInputError(f"{str(path)!r} holds an interrupted training; pass --resume "
                                   "to continue it or --overwrite to start over")
    return Path(os.path.realpath(path))  # a symlinked --out: the run goes where the link points


RUN_FILES = ("config.json", "model.pt", "guide.pt", "history.csv", "qc_thresholds.json",
             "names.json", "cells.csv", "checkpoints", "resolved_config.yaml")


def save_run(run: TrainedRun, path, overwrite: bool = False, extra_files: dict | None = None,
             checkpoints=None) -> Path:
    """Write ``run`` as a folder, atomically (see module docstring).

    ``extra_files`` maps file names to text written into the folder with it.
    ``checkpoints`` is the folder of this training's checkpoints, copied into
    the run; by default a ``checkpoints/`` folder inside ``path`` is kept. A
    symlinked ``path`` is resolved first: the run replaces the folder the link
    points to, and nothing is followed out of the run folder when the old run
    is deleted.
    """
    path = Path(os.path.realpath(path))
    objects = {k: type(v).__name__ for k, v in run.model_config.priors.items() if not isinstance(v, str)}
    if objects:
        raise CradleInputError(
            f"priors given as objects ({objects}) cannot be saved in a run folder (it never "
            "pickles); use a named prior (ModelConfig(effect_prior='laplace', effect_scale=0.5) or "
            "priors={'effect': 'laplace'}), or keep the trained run in memory")
    recover_run_folder(path)
    if path.exists() and (path / "config.json").exists() and not overwrite:
        raise CradleInputError(f"{str(path)!r} holds a trained run; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        _write_run(run, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        kept = Path(checkpoints) if checkpoints is not None else path / "checkpoints"
        if kept.is_dir() and not kept.is_symlink():
            shutil.copytree(kept, tmp / "checkpoints", symlinks=True)
        _fsync_dir(tmp)
        old = path.parent / f".{path.name}.old-{tag}"
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _fsync_dir(folder: Path):
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _write_run(run: TrainedRun, path: Path):
    data = run.data
    source = run.data_source or {"path": None, "args": {}}
    config = {"model": run.model_config.to_dict(), "train": run.train_config.to_dict(),
              "data": {"path": source["path"], "args": _jsonable(source["args"]),
                       "fingerprint": source.get("fingerprint"),
                       "control_label": data.control_label, "separator": data.separator},
              "best_epoch": int(run.best_epoch), "guide": run.train_config.guide}
    write_text(path / "config.json", json.dumps(config, indent=2))
    atomic_save(run.model.state_dict(), path / "model.pt")
    atomic_save(run.guide.state_dict(), path / "guide.pt")
    run.history.to_csv(path / "history.csv", index=False)
    names = {"genes": data.gene_names, "perturbations": data.perturbation_names,
             "artifacts": data.artifact_names, "conditions": data.condition_names,
             "qc_covariates": {"names": list(getattr(data, "qc_covariate_names", [])),
                               "centre": _floats(getattr(data, "qc_covariate_centre", None)),
                               "scale": _floats(getattr(data, "qc_covariate_scale", None))},
             "qc_flags": list(getattr(data, "qc_flag_names", []))}
    write_text(path / "names.json", json.dumps(names))
    if data.qc_thresholds is not None:
        write_text(path / "qc_thresholds.json", json.dumps(data.qc_thresholds.to_dict(), indent=2))
    cells = pd.DataFrame(data.artifact, index=data.obs_names,
                         columns=[ARTIFACT_PREFIX + a for a in data.artifact_names])
    cells.insert(0, SPLIT_COLUMN, data.split)
    cells[LIBRARY_COLUMN] = data.library
    cells[CONDITION_COLUMN] = np.asarray(data.conditions)
    qc = getattr(data, "qc_covariates", None)
    for j, name in enumerate(names["qc_covariates"]["names"]):
        cells[QC_PREFIX + name] = qc[:, j]
    for j, name in enumerate(names["qc_flags"]):
        cells[FLAG_PREFIX + name] = data.qc_flags[:, j]
    cells.to_csv(path / "cells.csv")


def _floats(values) -> list:
    return [] if values is None else [float(v) for v in np.asarray(values).ravel()]


def _saved_flag_names(run_dir: Path) -> list:
    return read_run_json(run_dir / "names.json").get("qc_flags") or []


def _saved_qc_covariates(run_dir: Path):
    """(names, centre, scale) of the run's QC covariates (empty for older runs)."""
    saved = read_run_json(run_dir / "names.json").get("qc_covariates") or {}
    names = saved.get("names", [])
    return names, np.asarray(saved.get("centre", []), float), np.asarray(saved.get("scale", []), float)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def rebuild_data(run_dir, adata: ad.AnnData | None = None) -> PerturbationData:
    """The run's PerturbationData, with the saved splits and artifact labels."""
    run_dir = Path(run_dir)
    config = read_run_json(run_dir / "config.json")
    source = "the AnnData given"
    if adata is None:
        src = config["data"]["path"]
        if src is None or not Path(src).exists():
            raise CradleInputError(
                f"the run's training file {src!r} is not available; pass the AnnData it was trained on")
        adata = read_anndata(src)
        source = f"the training file {src!r}"
    cells = read_run_csv(run_dir / "cells.csv", index_col=0).drop(
        columns=[LIBRARY_COLUMN, CONDITION_COLUMN], errors="ignore")
    qc_cols = [c for c in cells.columns if c.startswith((QC_PREFIX, FLAG_PREFIX))]
    qc_saved, cells = cells[qc_cols], cells.drop(columns=qc_cols)
    missing = cells.index.difference(adata.obs_names.astype(str))
    if len(missing):
        raise CradleInputError(
            f"{len(missing)} training cells (e.g. {list(missing[:3])}) are not in {source}")
    fingerprint = config["data"].get("fingerprint")
    if fingerprint:
        args = config["data"]["args"]
        check_fingerprint(fingerprint, adata, cells.index, args.get("perturbation_key", "perturbation"),
                          args.get("layer"), source)
    view = adata[cells.index].copy()
    for col in cells.columns:
        view.obs[col] = cells[col].to_numpy()
    args = dict(config["data"]["args"])
    for key in ("qc_k", "qc_columns", "doublets", "artifact_kinds", "split", "artifact",
                "counts_on_disk"):
        args.pop(key, None)
    art_cols = [c for c in cells.columns if c.startswith(ARTIFACT_PREFIX)]
    data = PerturbationData.from_anndata(view, split=SPLIT_COLUMN, artifact=art_cols, **args)
    data.artifact_names = [c[len(ARTIFACT_PREFIX):] for c in art_cols]
    names, centre, scale = _saved_qc_covariates(run_dir)
    if names:  # as trained (scrublet's doublet score is not recomputed)
        values = qc_saved[[QC_PREFIX + n for n in names]].to_numpy()
        data.set_qc_covariates(values * scale + centre, names, centre, scale)
    flag_names = _saved_flag_names(run_dir)
    if flag_names:
        data.qc_flags = qc_saved[[FLAG_PREFIX + n for n in flag_names]].to_numpy(dtype=np.float32)
        data.qc_flag_names = flag_names
    qc_path = run_dir / "qc_thresholds.json"
    if qc_path.exists():
        data.qc_thresholds = QCThresholds.from_dict(read_run_json(qc_path))
    return data


class RunData:
    """What a run folder knows without its training file.

    Names (genes, targets, artifact kinds, conditions), the control label and
    separator, and per training cell its split, artifact labels, library size
    and condition: enough for effects over new cells from the prior (``basal="prior"``),
    interventional sampling and counterfactuals of new cells; what needs the
    training cells' counts (effects over the screen's own cells, the default;
    evaluate, diagnose, embed, counterfactuals of the training cells) says so.
    """

    is_stand_in = True

    def __init__(self, run_dir: Path, config: dict):
        names = read_run_json(run_dir / "names.json")
        cells = read_run_csv(run_dir / "cells.csv", index_col=0)
        self.gene_names, self.perturbation_names = names["genes"], names["perturbations"]
        self.artifact_names, self.condition_names = names["artifacts"], names["conditions"]
        self.control_label = config["data"]["control_label"]
        self.separator = config["data"]["separator"]
        self.obs_names = list(cells.index.astype(str))
        self.split = cells[SPLIT_COLUMN].to_numpy(dtype=object)
        self.artifact = cells[[ARTIFACT_PREFIX + a for a in self.artifact_names]].to_numpy(
            dtype=np.float32)
        if LIBRARY_COLUMN not in cells:
            raise CradleInputError(f"{str(run_dir)!r} was saved by an earlier release without "
                                   "library sizes; pass the training AnnData to load it")
        self.library = cells[LIBRARY_COLUMN].to_numpy(dtype=np.float32)
        # each cell's dosage (runs saved before it was written: None, libraries then come
        # from the model where it makes them a mediator)
        self.saved_dosage = (np.stack([self.dosage_of(str(c)) for c in cells[CONDITION_COLUMN]])
                             if CONDITION_COLUMN in cells else None)
        qc_path = run_dir / "qc_thresholds.json"
        self.qc_thresholds = (QCThresholds.from_dict(read_run_json(qc_path))
                              if qc_path.exists() else None)
        self.gene_mean = self.gene_std = None  # filled from the guide's state
        (self.qc_covariate_names, self.qc_covariate_centre,
         self.qc_covariate_scale) = _saved_qc_covariates(run_dir)
        self.qc_flag_names = _saved_flag_names(run_dir) or list(self.artifact_names)

    n_genes = property(lambda self: len(self.gene_names))
    n_perturbations = property(lambda self: len(self.perturbation_names))
    n_artifacts = property(lambda self: len(self.artifact_names))
    n_cells = property(lambda self: len(self.obs_names))
    n_qc_covariates = property(lambda self: len(self.qc_covariate_names))
    n_qc_flags = property(lambda self: len(self.qc_flag_names))

    def indices(self, split=None) -> np.ndarray:
        return np.arange(self.n_cells) if split is None else np.flatnonzero(self.split == split)

    dosage_of = PerturbationData.dosage_of

    def __getattr__(self, name):
        if name in ("counts", "batches", "conditions", "dosage", "batch"):
            raise CradleInputError(
                "this needs the training cells' counts, and the run's training file is not "
                "available; pass the training AnnData (load_run(run, adata=...))")
        raise AttributeError(name)


# model tensors added after runs were first saved, and what a run saved without them meant:
# the QC covariates' biological part (latent artifact state) started at none
LATER_MODEL_TENSORS = ("artifact_evidence.qc_basal", "artifact_evidence.qc_biological")


def _with_later_defaults(model, state: dict) -> dict:
    """A saved model state, with the tensors added since it was saved at the freshly built
    model's values (``qc_basal`` starts at zero: no biological part, as those runs had)."""
    later = {k: v for k, v in model.state_dict().items()
             if k not in state and k.startswith(LATER_MODEL_TENSORS)}
    return {**state, **later}


def load_run(run_dir, adata: ad.AnnData | None = None, device="cpu") -> TrainedRun:
    """Load a run folder written by :func:`save_run` (tensors only, ``weights_only=True``).

    Without ``adata``, the training file named in ``config.json`` is read and
    checked against the run's fingerprint; when that file is gone, the run
    loads with a :class:`RunData` stand-in (and a warning): effects over
    prior cells (``basal="prior"``), sampling and counterfactuals of new cells
    still work.
    """
    run_dir = Path(run_dir)
    recover_run_folder(run_dir)
    if not (run_dir / "config.json").exists():
        raise CradleInputError(f"{str(run_dir)!r} is not a run folder (no config.json)")
    with _DamagedRun(run_dir):
        return _load_run(run_dir, adata, device)


def _load_run(run_dir: Path, adata, device) -> TrainedRun:
    config = read_run_json(run_dir / "config.json")
    src = config["data"]["path"]
    if adata is None and (src is None or not Path(src).exists()):
        import warnings

        warnings.warn(f"the run's training file {src!r} is not available: loaded without its "
                      "cells (effects, sampling and counterfactuals of new cells work)",
                      UserWarning, stacklevel=2)
        data = RunData(run_dir, config)
    else:
        data = rebuild_data(run_dir, adata)
    run = _load_weights(run_dir, config, data, device)
    if getattr(data, "is_stand_in", False):
        data.gene_mean = run.guide.gene_mean.cpu().numpy()
        data.gene_std = run.guide.gene_std.cpu().numpy()
    return run


def _load_weights(run_dir: Path, config: dict, data, device) -> TrainedRun:
    """The run's model and guide, built for ``data`` and loaded from ``run_dir``."""
    mc = ModelConfig.from_dict(config["model"])
    tc = TrainConfig(**config["train"])
    if getattr(data, "is_stand_in", False):
        model = CradleModel(data.n_genes, data.n_perturbations, data.n_artifacts, mc,
                            target_gene=target_gene_index(data.perturbation_names, data.gene_names),
                            n_qc_covariates=data.n_qc_covariates,
                            qc_covariate_names=data.qc_covariate_names, n_flags=data.n_qc_flags)
        guide = make_guide(config["guide"], model, temperature=tc.guide_temperature)
    else:
        model = CradleModel.from_data(data, mc)
        guide = make_guide(config["guide"], model, data.gene_mean, data.gene_std,
                           temperature=tc.guide_temperature)
    model.load_state_dict(_with_later_defaults(model, load_tensors(run_dir / "model.pt", device)))
    guide.load_state_dict(load_tensors(run_dir / "guide.pt", device))
    model.to(device).eval()
    guide.to(device).eval()
    history = read_run_csv(run_dir / "history.csv")
    run = TrainedRun(model, guide, mc, tc, history, config["best_epoch"], data)
    run.data_source = {"path": config["data"]["path"], "args": config["data"]["args"],
                       "fingerprint": config["data"].get("fingerprint")}
    return run


MEMBERS = "members"  # subfolder of a run folder holding the other members of an ensemble


def save_members(run: TrainedRun, path, members: int) -> list:
    """Train ``members - 1`` more runs beside ``run`` (seeds ``seed + 1``, …) and save each in
    ``path/members/<k>/``; :func:`load_members` reads them back. Returns the new members."""
    path = Path(path)
    if (path / MEMBERS).exists():
        shutil.rmtree(path / MEMBERS)  # members of an earlier training of this folder
    new = fit_ensemble(run.data, run.train_config, run.model_config, members, first=run)[1:]
    for k, member in enumerate(new, start=1):
        member.data_source = run.data_source
        save_run(member, path / MEMBERS / str(k))
    return new


def load_members(run_dir, adata: ad.AnnData | None = None, device="cpu") -> list:
    """The run in ``run_dir`` followed by the members saved beside it by
    :func:`save_members` (a list of one run when there are none); all share the
    first run's data, read once (see :func:`load_run`)."""
    run_dir = Path(run_dir)
    first = load_run(run_dir, adata, device)
    folders = sorted((p for p in (run_dir / MEMBERS).glob("*") if p.is_dir() and p.name.isdigit()),
                     key=lambda p: int(p.name)) if (run_dir / MEMBERS).is_dir() else []
    rest = []
    for folder in folders:
        recover_run_folder(folder)
        with _DamagedRun(folder):
            config = read_run_json(folder / "config.json")
            rest.append(_load_weights(folder, config, first.data, device))
    return [first, *rest]



def cells_for_run(run: TrainedRun, adata: ad.AnnData, perturbation_key: str | None = None,
                  layer: str | None = None) -> PerturbationData:
    """New cells as the run sees them: its genes, targets, standardisation and QC rules.

    Artifact states come from the run's QC thresholds (same rule as in training)
    or, where QC was not used, from the training artifact obs columns if present.
    """
    ref = run.data
    genes = list(map(str, adata.var_names))
    if genes != ref.gene_names:
        missing = [g for g in ref.gene_names if g not in set(genes)]
        raise CradleInputError(
            f"the cells' genes differ from the run's ({len(genes)} vs {ref.n_genes}; "
            f"e.g. missing {missing[:3]}); subset or reorder them as adata[:, run_genes]")
    key = perturbation_key or ((run.data_source or {}).get("args") or {}).get(
        "perturbation_key", "perturbation")
    obs = adata.obs.copy()
    flags = None
    if ref.qc_thresholds is not None:
        labels = ref.qc_thresholds.judge(adata, layer=layer)
        art = ref.qc_thresholds.artifact_matrix(labels)
        # scrublet is not rerun on new cells: their doublet flag reads 0
        flags = labels.reindex(columns=[f"qc_{c}" for c in ref.qc_flag_names],
                               fill_value=0).to_numpy(dtype=np.float32)
    else:
        cols = [a for a in ref.artifact_names if a in obs]
        if len(cols) != ref.n_artifacts:
            raise CradleInputError(
                f"the run used artifact columns {ref.artifact_names}; add them to obs")
        art = obs[cols].to_numpy(dtype="float32")
    view = ad.AnnData(X=adata.X if layer is None else adata.layers[layer], obs=obs,
                      var=pd.DataFrame(index=genes))
    for i, name in enumerate(ref.artifact_names):
        view.obs[ARTIFACT_PREFIX + name] = art[:, i]
    view.obs[SPLIT_COLUMN] = "train"  # new cells: no split of their own
    data = PerturbationData.from_anndata(
        view, key, ref.control_label, combination_separator=ref.separator, split=SPLIT_COLUMN,
        artifact=[ARTIFACT_PREFIX + a for a in ref.artifact_names], drop_labels=())
    # express the cells in the run's coordinates
    data.perturbation_names = list(ref.perturbation_names)
    data.condition_dosage = np.stack([ref.dosage_of(c) for c in data.condition_names])
    data.dosage = data.condition_dosage[data.condition_code]
    data.artifact_names = list(ref.artifact_names)
    data.gene_mean, data.gene_std = ref.gene_mean, ref.gene_std
    data.qc_thresholds = ref.qc_thresholds
    if flags is not None:
        data.qc_flags, data.qc_flag_names = flags, list(ref.qc_flag_names)
    _run_qc_covariates(data, ref, adata, layer)
    data._device_cache.clear()
    return data


def _run_qc_covariates(data, ref, adata, layer):
    """New cells' QC covariates on the run's scale; ones that cannot be computed
    here (scrublet's doublet score) are set to the training median, with a warning."""
    names = list(getattr(ref, "qc_covariate_names", []))
    if not names:
        return
    from cradle_pyro.qc import artifact_covariates, qc_metrics

    table = artifact_covariates(qc_metrics(adata, layer=layer), adata.obs, ref.qc_thresholds)
    centre, scale = ref.qc_covariate_centre, ref.qc_covariate_scale
    missing = [n for n in names if n not in table]
    if missing:
        import warnings

        warnings.warn(f"QC covariate(s) {missing} of the run cannot be computed for these cells; "
                      "set to the training median (no evidence either way)", UserWarning,
                      stacklevel=3)
    values = np.stack([table[n].to_numpy(float) if n in table else np.full(len(table), centre[j])
                       for j, n in enumerate(names)], 1)
    data.set_qc_covariates(values, names, centre, scale)
