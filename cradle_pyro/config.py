"""Model configuration, and the baselines as switches of one model.

====================  ======  =====================  ==========  ==========
``model``             mask    artifact latents       embeddings  combine
====================  ======  =====================  ==========  ==========
``cradle`` (default)  yes     yes                    learnt      concat
``sams``              yes     no                     learnt      sum
``cpa``               no      no                     learnt      sum
``cvae``              no      no (fed as input)      none        concat
``svae+``             Beta-B  no                     learnt      sum
====================  ======  =====================  ==========  ==========

``cvae`` feeds the dosage and artifact vectors straight to the decoder.

Example
-------
>>> cfg = ModelConfig(model="sams")
>>> cfg.use_mask, cfg.use_artifact_latents, cfg.resolved_combine
(True, False, 'sum')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import CradleInputError
from .validation import check_fields

MODELS = ("cradle", "sams", "cpa", "cvae", "svae+")
LIKELIHOODS = ("nb", "poisson", "zinb")


# field -> (kind, low, high[, options]) checked on construction
_RULES = {
    "latent_dim": ("int", 1, None),
    "hidden_dim": ("int", 1, None),
    "n_layers": ("int", 1, None),
    "effect_scale": ("float", 0, None, {"low_open": True}),
    "mask_prob": ("float", 0, 1, {"low_open": True, "high_open": True}),
    "target_effects": ("bool", None, None),
    "target_effect_scale": ("float", 0, None, {"low_open": True}),
}


@dataclass
class ModelConfig:
    """Everything that defines the generative model.

    Parameters
    ----------
    model
        One of ``cradle``, ``sams``, ``cpa``, ``cvae``, ``svae+``.
    latent_dim
        Dimension ``d`` of the basal state and of each effect.
    hidden_dim, n_layers
        Width and depth of the encoder and decoder MLPs.
    likelihood
        ``nb`` (default, library-size scaled), ``poisson`` or ``zinb``.
    combine
        ``concat`` or ``sum``; ``None`` picks the published default of ``model``.
    effect_prior
        ``normal``, ``laplace``, ``student-t``, each also as ``*-learnt-scale``
        (the scale fitted with the model and saved with it); or see ``priors``.
    effect_scale
        Scale of the effect prior.
    mask_prob
        π of the Bernoulli mask prior.
    mask_beta
        (a, b) of the Beta prior on the mask rate (``svae+``).
    target_effects
        Give each perturbation whose target is a measured gene a direct
        (cis) effect on that gene (site ``target_effect``).
    target_effect_scale
        Scale of its Normal prior, in natural-log fold change.
    priors
        Site name → a Pyro distribution (expanded to the site's shape) or a
        callable ``shape -> distribution``, overriding the defaults. Only
        distributions are allowed in saved runs' JSON via their string names.
    """

    model: str = "cradle"
    latent_dim: int = 10
    hidden_dim: int = 128
    n_layers: int = 1
    likelihood: str = "nb"
    combine: str | None = None
    effect_prior: str = "normal"
    effect_scale: float = 1.0
    mask_prob: float = 0.1
    mask_beta: tuple = (1.0, 9.0)
    target_effects: bool = True
    target_effect_scale: float = 2.0
    priors: dict = field(default_factory=dict)

    def __post_init__(self):
        check_fields(vars(self), _RULES, "ModelConfig")
        if self.model not in MODELS:
            raise CradleInputError(f"model={self.model!r}; choose one of {list(MODELS)}")
        if self.likelihood not in LIKELIHOODS:
            raise CradleInputError(
                f"likelihood={self.likelihood!r}; choose one of {list(LIKELIHOODS)}")
        from .priors import prior_names

        if self.effect_prior not in prior_names():
            raise CradleInputError(f"effect_prior={self.effect_prior!r}; choose one of {prior_names()}")
        if self.combine not in (None, "concat", "sum"):
            raise CradleInputError(f"combine={self.combine!r}; use 'concat' or 'sum'")
        if self.model == "cvae" and self.combine == "sum":
            raise CradleInputError("model='cvae' feeds dosage to the decoder: combine must be 'concat'")

    @property
    def use_mask(self) -> bool:
        return self.model in ("cradle", "sams", "svae+")

    @property
    def beta_bernoulli_mask(self) -> bool:
        return self.model == "svae+"

    @property
    def use_embeddings(self) -> bool:
        return self.model != "cvae"

    @property
    def use_artifact_latents(self) -> bool:
        return self.model == "cradle"

    @property
    def artifact_to_decoder(self) -> bool:
        """Whether the artifact state reaches the decoder at all."""
        return self.model in ("cradle", "cvae")

    @property
    def resolved_combine(self) -> str:
        if self.combine is not None:
            return self.combine
        return "concat" if self.model in ("cradle", "cvae") else "sum"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["priors"] = {k: v for k, v in self.priors.items() if isinstance(v, str)}
        d["mask_beta"] = list(self.mask_beta)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["mask_beta"] = tuple(d.get("mask_beta", (1.0, 9.0)))
        return cls(**d)
