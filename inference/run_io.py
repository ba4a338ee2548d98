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
and artifact labels, so a loaded run sees exactly the cells it was trained on.
Files are written to a temporary name, then renamed.

Example
-------
>>> import tempfile
>>> from cradle_pyro import simulate_screen
>>> from inference import TrainConfig
>>> adata = simulate_screen(300, 60, seed=0)
>>> path = tempfile.mkdtemp() + "/screen.h5ad"
>>> adata.write_h5ad(path)
>>> run = train_from_file(path, TrainConfig(epochs=1, progress=False), doublets=False)
>>> save_run(run, tempfile.mkdtemp() + "/run") .name
'run'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cradle_pyro.config import ModelConfig
from cradle_pyro.data import PerturbationData
from cradle_pyro.errors import CradleInputError
from cradle_pyro.guides import make_guide
from cradle_pyro.model import CradleModel
from cradle_pyro.qc import QCThresholds

from .train import TrainConfig, TrainedRun, atomic_save, fit

SPLIT_COLUMN = "cradle_split"
ARTIFACT_PREFIX = "cradle_artifact_"


def _write_text(path: Path, text: str):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_data(path, data_args: dict) -> PerturbationData:
    """Read an AnnData file into PerturbationData (clear error if it is missing)."""
    path = Path(path)
    if not path.exists():
        raise CradleInputError(f"AnnData file {str(path)!r} not found")
    return PerturbationData.from_anndata(ad.read_h5ad(path), **data_args)


def train_from_file(path, train_config=None, model_config=None, checkpoint_dir=None,
                    resume=False, **data_args) -> TrainedRun:
    """Load ``path`` into PerturbationData with ``data_args`` and :func:`fit` it."""
    data = load_data(path, data_args)
    run = fit(data, train_config, model_config, checkpoint_dir=checkpoint_dir, resume=resume)
    run.data_source = {"path": str(Path(path).resolve()), "args": data_args}
    return run


def save_run(run: TrainedRun, path) -> Path:
    """Write ``run`` as a folder (see module docstring)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    data = run.data
    source = run.data_source or {"path": None, "args": {}}
    config = {"model": run.model_config.to_dict(), "train": run.train_config.to_dict(),
              "data": {"path": source["path"], "args": _jsonable(source["args"]),
                       "control_label": data.control_label, "separator": data.separator},
              "best_epoch": int(run.best_epoch), "guide": run.train_config.guide}
    _write_text(path / "config.json", json.dumps(config, indent=2))
    atomic_save(run.model.state_dict(), path / "model.pt")
    atomic_save(run.guide.state_dict(), path / "guide.pt")
    run.history.to_csv(path / "history.csv", index=False)
    names = {"genes": data.gene_names, "perturbations": data.perturbation_names,
             "artifacts": data.artifact_names, "conditions": data.condition_names}
    _write_text(path / "names.json", json.dumps(names))
    if data.qc_thresholds is not None:
        _write_text(path / "qc_thresholds.json", json.dumps(data.qc_thresholds.to_dict(), indent=2))
    cells = pd.DataFrame(data.artifact, index=data.obs_names,
                         columns=[ARTIFACT_PREFIX + a for a in data.artifact_names])
    cells.insert(0, SPLIT_COLUMN, data.split)
    cells.to_csv(path / "cells.csv")
    return path


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def rebuild_data(run_dir, adata: ad.AnnData | None = None) -> PerturbationData:
    """The run's PerturbationData, with the saved splits and artifact labels."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    if adata is None:
        src = config["data"]["path"]
        if src is None or not Path(src).exists():
            raise CradleInputError(
                f"the run's training file {src!r} is not available; pass the AnnData it was trained on")
        adata = ad.read_h5ad(src)
    cells = pd.read_csv(run_dir / "cells.csv", index_col=0)
    missing = cells.index.difference(adata.obs_names.astype(str))
    if len(missing):
        raise CradleInputError(
            f"{len(missing)} training cells (e.g. {list(missing[:3])}) are not in the AnnData given")
    view = adata[cells.index].copy()
    for col in cells.columns:
        view.obs[col] = cells[col].to_numpy()
    args = dict(config["data"]["args"])
    for key in ("qc_k", "qc_columns", "doublets", "artifact_kinds", "split", "artifact"):
        args.pop(key, None)
    art_cols = [c for c in cells.columns if c.startswith(ARTIFACT_PREFIX)]
    data = PerturbationData.from_anndata(view, split=SPLIT_COLUMN, artifact=art_cols, **args)
    data.artifact_names = [c[len(ARTIFACT_PREFIX):] for c in art_cols]
    qc_path = run_dir / "qc_thresholds.json"
    if qc_path.exists():
        data.qc_thresholds = QCThresholds.from_dict(json.loads(qc_path.read_text()))
    return data


def load_run(run_dir, adata: ad.AnnData | None = None, device="cpu") -> TrainedRun:
    """Load a run folder written by :func:`save_run` (tensors only, ``weights_only=True``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise CradleInputError(f"{str(run_dir)!r} is not a run folder (no config.json)")
    config = json.loads((run_dir / "config.json").read_text())
    data = rebuild_data(run_dir, adata)
    mc = ModelConfig.from_dict(config["model"])
    tc = TrainConfig(**config["train"])
    model = CradleModel.from_data(data, mc)
    guide = make_guide(config["guide"], model, data.gene_mean, data.gene_std)
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location=device, weights_only=True))
    guide.load_state_dict(torch.load(run_dir / "guide.pt", map_location=device, weights_only=True))
    model.to(device).eval()
    guide.to(device).eval()
    history = pd.read_csv(run_dir / "history.csv")
    run = TrainedRun(model, guide, mc, tc, history, config["best_epoch"], data)
    run.data_source = {"path": config["data"]["path"], "args": config["data"]["args"]}
    return run


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
    if ref.qc_thresholds is not None:
        labels = ref.qc_thresholds.judge(adata, layer=layer)
        art = ref.qc_thresholds.artifact_matrix(labels)
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
        artifact=[ARTIFACT_PREFIX + a for a in ref.artifact_names], drop_labels=(),
        non_integer_counts="round")
    # express the cells in the run's coordinates
    data.perturbation_names = list(ref.perturbation_names)
    data.condition_dosage = np.stack([ref.dosage_of(c) for c in data.condition_names])
    data.dosage = data.condition_dosage[data.condition_code]
    data.artifact_names = list(ref.artifact_names)
    data.gene_mean, data.gene_std = ref.gene_mean, ref.gene_std
    data.qc_thresholds = ref.qc_thresholds
    data._device_cache.clear()
    return data
