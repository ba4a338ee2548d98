"""Named sets of settings: ``cradle-paper``, the published CRADLE-VAE.

A preset fixes the model, the training and the ATE recipe together, so a
reader can run the model as published and see what each later choice of this
library buys (``benchmarks/ablation.py``). ``cradle-paper`` is read from the
published code (dmis-lab/CRADLE-VAE: ``demo/cradle_vae_norman.yaml``,
``cradle_vae/models``, ``loss_modules.py``, ``train_norman.py``, ``eval.py``):

- sites: effect, mask, artifact effect, basal, counts (no direct gene, target
  or library effects, no basal-leakage penalty);
- sizes: latent 200, hidden 400; basal encoder of 1 hidden layer, decoder of
  2 (``decoder_n_layers + 1`` in the published code), effect encoder of 4; mask prior 0.01; effect prior N(0, 1); library-scaled NB;
- guide: correlated, straight-through mask at temperature 1.0, the basal
  encoder's output *is* the basal state (not residual);
- objective: reconstruction weighted per batch and unnormalised (clean cells
  × the batch's artifact share s, artifact cells × 1 − s), the alignment KL
  summed over cells at β = 0.5 (``alignment_weighting="published"``), 5
  particles;
- optimiser: Adam at 3·10⁻⁴, weight decay 10⁻⁶, batch 512, gradient norm
  clipped at 100, up to 2,000 epochs stopped 50 epochs after the best
  validation loss, the best state kept;
- ATEs over new cells from the prior (``basal="prior"``).

Where the published code has a defect it is not copied (the alignment KL
divides the squared mean difference by σ₂², reference cells come from the
right subset); ``docs/model.md`` lists each remaining difference.

Example
-------
>>> model_config, train_config = preset("cradle-paper", epochs=5)
>>> model_config.latent_dim, train_config.lr, train_config.epochs, train_config.class_balance
(200, 0.0003, 5, 'published')
>>> PRESETS["cradle-paper"]["effects"]
{'basal': 'prior'}
"""

from __future__ import annotations

from cradle_pyro.config import ModelConfig
from cradle_pyro.errors import CradleInputError

from .train import TrainConfig

PRESETS = {
    "cradle-paper": {
        "model": {"model": "cradle", "latent_dim": 200, "hidden_dim": 400, "n_layers": 1,
                  "decoder_layers": 2, "effect_encoder_layers": 4, "residual_encoder": False, "mask_prob": 0.01,
                  "effect_scale": 1.0, "likelihood": "nb", "combine": "concat",
                  "gene_effects": False, "target_effects": False, "library_effects": False},
        "train": {"lr": 3e-4, "weight_decay": 1e-6, "batch_size": 512, "num_particles": 5,
                  "beta": 0.5, "alignment_weighting": "published", "class_balance": "published",
                  "clip_norm": 100.0, "independence": 0.0, "select": "elbo", "patience": 50,
                  "epochs": 2000, "guide_temperature": 1.0},
        "effects": {"basal": "prior"},
    },
}


def preset_options(name: str) -> dict:
    """The preset's model and training settings as one flat dict (the YAML keys)."""
    if name not in PRESETS:
        raise CradleInputError(f"preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[name]["model"], **PRESETS[name]["train"]}


def preset(name: str, **changes) -> tuple[ModelConfig, TrainConfig]:
    """``(ModelConfig, TrainConfig)`` of preset ``name``, with ``changes`` to either
    (e.g. ``seed=1``, ``epochs=100``, ``gene_effects=True``)."""
    options = {**preset_options(name), **changes}
    model_fields = set(ModelConfig.__dataclass_fields__)
    train_fields = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(options) - model_fields - train_fields)
    if unknown:
        raise CradleInputError(f"preset {name!r}: unknown setting(s) {unknown}")
    return (ModelConfig(**{k: v for k, v in options.items() if k in model_fields}),
            TrainConfig(**{k: v for k, v in options.items() if k in train_fields}))


__all__ = ["PRESETS", "preset", "preset_options"]
