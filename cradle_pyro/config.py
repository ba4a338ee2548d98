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
ARTIFACT_STATES = ("observed", "latent")
ARTIFACT_EVIDENCE = ("both", "covariates", "flags")

LIKELIHOODS = ("nb", "poisson", "zinb")


# field -> (kind, low, high[, options]) checked on construction
_RULES = {
    "latent_dim": ("int", 1, None),
    "hidden_dim": ("int", 1, None),
    "n_layers": ("int", 1, None),
    "effect_encoder_layers": ("int", 1, None),
    "decoder_layers": ("int", 1, None, {"optional": True}),
    "residual_encoder": ("bool", None, None),
    "effect_scale": ("float", 0, None, {"low_open": True}),
    "mask_prob": ("float", 0, 1, {"low_open": True, "high_open": True}),
    "target_effects": ("bool", None, None),
    "target_effect_scale": ("float", 0, None, {"low_open": True}),
    "gene_effects": ("bool", None, None),
    "gene_effect_scale": ("float", 0, None, {"low_open": True}),
    "library_effects": ("bool", None, None),
    "library_effect_scale": ("float", 0, None, {"low_open": True}),
    "bayesian_decoder": ("bool", None, None),
    "decoder_weight_scale": ("float", 0, None, {"low_open": True}),
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
    effect_encoder_layers
        Hidden layers of q(effect | mask)'s MLP (the published model has 4).
    decoder_layers
        Hidden layers of the decoder; ``None`` (default): ``n_layers`` (the
        published model has 2, its encoder 1).
    residual_encoder
        ``True`` (default): q(basal | x, offsets) reads the cell's whole
        latent state and its basal state is what is left once the offsets are
        subtracted; ``False``: the encoder's output is the basal state itself,
        as in the published code (it then absorbs part of each perturbation:
        see ``docs/model.md``).
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
    gene_effects
        Give each perturbation a direct, sparse effect on every gene's logit
        (site ``gene_effect``, P × G) beside its latent effect: what a
        d-dimensional latent shared by all genes cannot express.
    gene_effect_prior
        Its prior: ``laplace`` (default), ``normal`` or ``student-t``; with
        ``-learnt-scale`` each perturbation's scale is learnt with the model
        (type-II maximum likelihood). Learnt scales shrink too much on Norman
        (they fit the many near-zero genes): see ``benchmarks/gene_effects.py``.
    gene_effect_scale
        Scale of that prior (the starting scale when learnt), in natural-log
        fold change; 3.0 chosen by five-fold cross-validation on the seen cells
        of Norman (validation r above 1.0 on every seed, MSE level; the
        simulated screens agree: ``benchmarks/cross_validation.py``,
        ``benchmarks/results/gene_effects_*_scale_check.json``).
    library_effects
        Give each perturbation an effect on the cell's library size (site
        ``library_effect``): the library becomes a mediator, LogNormal around
        the screen's mean log library plus ``dosage @ library_effect``, and
        an intervention on the dosage moves it (each observed cell keeps its
        own noise: :func:`cradle_pyro.model.CradleModel.counterfactual_library`).
        Without it the library is exogenous and an ATE is taken at the
        libraries the cells had, while a perturbation that changes how much
        RNA a cell has (KLF1 activation on Norman: median library 188
        against 106 for control cells) changes every low-count gene's
        normalised expression. On by default: chosen by five-fold
        cross-validation on the seen cells of Norman (validation MSE 12 %
        lower and r 0.03-0.04 higher on every seed); on simulated screens
        whose perturbations move the library it lowers the ATE error on every
        seed, and where they do not it changes it within the seed spread
        (``benchmarks/library_effects.py``).
    library_effect_scale
        Scale of its Normal prior, in natural-log fold change of the library.
    bayesian_decoder
        Make the decoder's output layer (G × H weights) a latent with a prior
        (site ``decoder_weight``) instead of a point estimate, so that what
        the data leave unknown about how the latent state maps to each gene
        enters every interval. Off by default: in simulation-based
        calibration the point-estimate decoder is where the intervals'
        overconfidence comes from (90 % coverage 0.72–0.77; 0.91 with the
        generating decoder in its place), but this latent raises coverage
        only to 0.73–0.80; a bagged ensemble does better
        (:func:`~cradle_pyro.inference.ensembles.fit_ensemble`, ``bootstrap=True``;
        ``benchmarks/sbc.py``, docs/measurements.md).
    bayesian_decoder_layers
        Which weights are latents: ``"output"`` (default) or ``"all"`` (every
        layer of the decoder; sites ``decoder_hidden_weight_<k>`` beside
        ``decoder_weight``).
    decoder_weight_scale
        Scale of the Normal prior on those weights.
    artifact_state
        ``"observed"`` (default): a cell's artifact state is its QC flags.
        ``"latent"``: the artifact state is a latent cause of the counts, of
        the QC covariates and of the flags, which become noisy labels with a
        learnt sensitivity and specificity (:mod:`cradle_pyro.artifact_state`).
    artifact_evidence
        With a latent artifact state, what it is abducted from:
        ``"covariates"`` (default; the QC metrics), ``"flags"`` (the k·MAD /
        scrublet flags as noisy labels) or ``"both"``. The flags are functions
        of the covariates, so ``"both"`` counts that evidence twice; measured
        on the simulator it pulls clean cells that a threshold flagged into
        the causes (see ``benchmarks/latent_artifacts.py``).
    artifact_causes
        With a latent artifact state: its kinds (one latent 0/1 cause each).
        ``damaged``, ``low_complexity`` and ``doublet`` start from their
        known QC signatures; other names start neutral.
    flag_sensitivity_prior, flag_specificity_prior
        (a, b) of the Beta priors on P(a cause trips a flag) and P(no flag |
        clean) (latent artifact state only).
    priors
        Site name → a Pyro distribution (expanded to the site's shape) or a
        callable ``shape -> distribution``, overriding the defaults. Only
        distributions are allowed in saved runs' JSON via their string names.
    """

    model: str = "cradle"
    latent_dim: int = 10
    hidden_dim: int = 128
    n_layers: int = 1
    effect_encoder_layers: int = 1
    decoder_layers: int | None = None
    residual_encoder: bool = True
    likelihood: str = "nb"
    combine: str | None = None
    effect_prior: str = "normal"
    effect_scale: float = 1.0
    mask_prob: float = 0.1
    mask_beta: tuple = (1.0, 9.0)
    target_effects: bool = True
    target_effect_scale: float = 2.0
    gene_effects: bool = True
    gene_effect_prior: str = "laplace"
    gene_effect_scale: float = 3.0
    library_effects: bool = True
    library_effect_scale: float = 1.0
    bayesian_decoder: bool = False
    bayesian_decoder_layers: str = "output"
    decoder_weight_scale: float = 1.0
    artifact_state: str = "observed"
    artifact_evidence: str = "covariates"
    artifact_causes: tuple = ("damaged", "low_complexity", "doublet")
    flag_sensitivity_prior: tuple = (2.0, 2.0)
    flag_specificity_prior: tuple = (18.0, 2.0)
    priors: dict = field(default_factory=dict)

    def __post_init__(self):
        check_fields(vars(self), _RULES, "ModelConfig")
        if self.model not in MODELS:
            raise CradleInputError(f"model={self.model!r}; choose one of {list(MODELS)}")
        if self.likelihood not in LIKELIHOODS:
            raise CradleInputError(
                f"likelihood={self.likelihood!r}; choose one of {list(LIKELIHOODS)}")
        from .priors import prior_names

        for name in ("effect_prior", "gene_effect_prior"):
            if getattr(self, name) not in prior_names():
                raise CradleInputError(f"{name}={getattr(self, name)!r}; choose one of {prior_names()}")
        if self.artifact_state not in ARTIFACT_STATES:
            raise CradleInputError(
                f"artifact_state={self.artifact_state!r}; choose one of {list(ARTIFACT_STATES)}")
        for name in ("flag_sensitivity_prior", "flag_specificity_prior"):
            value = getattr(self, name)
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and v > 0 for v in value)):
                raise CradleInputError(f"{name}={value!r}; give two positive numbers (a, b) "
                                       "of a Beta prior")
        if self.artifact_evidence not in ARTIFACT_EVIDENCE:
            raise CradleInputError(f"artifact_evidence={self.artifact_evidence!r}; choose one of "
                                   f"{list(ARTIFACT_EVIDENCE)}")
        causes = self.artifact_causes
        if (not isinstance(causes, (tuple, list)) or not causes
                or not all(isinstance(c, str) and c for c in causes) or len(set(causes)) != len(causes)):
            raise CradleInputError(f"artifact_causes={causes!r}; give distinct names, e.g. "
                                   "('damaged', 'low_complexity', 'doublet')")
        if self.bayesian_decoder_layers not in ("output", "all"):
            raise CradleInputError(f"bayesian_decoder_layers={self.bayesian_decoder_layers!r}; "
                                   "use 'output' or 'all'")
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
    def latent_artifacts(self) -> bool:
        """Whether the artifact state is latent (the QC flags are evidence about it)."""
        return self.artifact_state == "latent"

    @property
    def resolved_combine(self) -> str:
        if self.combine is not None:
            return self.combine
        return "concat" if self.model in ("cradle", "cvae") else "sum"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["priors"] = {k: v for k, v in self.priors.items() if isinstance(v, str)}
        for name in ("mask_beta", "flag_sensitivity_prior", "flag_specificity_prior",
                     "artifact_causes"):
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        # runs saved before the direct per-gene path existed were trained without it
        d.setdefault("gene_effects", False)
        d["mask_beta"] = tuple(d.get("mask_beta", (1.0, 9.0)))
        for name in ("flag_sensitivity_prior", "flag_specificity_prior", "artifact_causes"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)
