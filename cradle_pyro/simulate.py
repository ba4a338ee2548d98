"""A perturbation screen with a known generative truth and injected artifacts.

Each cell has a basal state ``z ~ N(0, I)``; its perturbation shifts ``z`` by a
sparse latent effect (combinations add their singles' effects, some with an
extra interaction term); expression proportions are ``softmax(baseline + z W)``
and counts are negative binomial around ``library · proportions``.

Artifacts are injected on top of the clean counts, so every cell keeps its
**clean twin** (``layers["clean"]``, the same cell's counts without the
artifact):

- ``damaged``: cytoplasmic mRNA lost (non-mitochondrial counts thinned), so
  the library shrinks and the mitochondrial share rises;
- ``doublet``: the cell's counts plus another cell's clean counts;
- ``low_complexity``: most transcripts lost, few genes detected.

With ``knockdown`` set the screen is CRISPRi-like: each single perturbation is
named after a measured gene and, besides its latent effect, multiplies that
gene's expression by about ``exp(knockdown)`` (a direct, single-gene effect
that a low-dimensional latent cannot express); ``uns["truth"]["target_gene"]``
names the targets.

Example
-------
>>> adata = simulate_screen(n_cells=300, n_genes=120, seed=1)
>>> adata.shape, "clean" in adata.layers
((300, 120), True)
>>> sorted(adata.obs["artifact_kind"].unique())[:2]
['damaged', 'doublet']
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ARTIFACT_KINDS = ("damaged", "doublet", "low_complexity")

_MT = ["MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3",
       "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB"]
_HB = ["HBA1", "HBA2", "HBB", "HBD", "HBG1", "HBG2", "HBM"]


def _gene_names(n_genes: int) -> list[str]:
    n_mt = min(len(_MT), max(1, n_genes // 50))
    n_ribo = max(2, n_genes // 25)
    n_hb = min(len(_HB), max(1, n_genes // 100))
    ribo = [f"RPL{i + 1}" if i % 2 == 0 else f"RPS{i + 1}" for i in range(n_ribo)]
    named = _MT[:n_mt] + ribo + _HB[:n_hb]
    rest = [f"GENE{i:04d}" for i in range(n_genes - len(named))]
    return named + rest


def _nb(rng, mean, dispersion):
    """Negative-binomial draws as a gamma-Poisson mixture."""
    rate = rng.gamma(dispersion, mean / dispersion)
    return rng.poisson(rate)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _damage_design(rng, genes, signature: float, n_damaged: int):
    """Per-gene retention log-odds of damaged cells, and each damaged cell's kept share.

    Ribosomal-protein transcripts leave a leaky cell first; others are kept in
    proportion to how nuclear or long-lived they are (a random gene effect).
    """
    retention = rng.normal(0.0, signature, len(genes))
    ribosomal = np.array([g.startswith(("RPL", "RPS")) for g in genes])
    retention[ribosomal] -= signature
    return retention, rng.beta(3.0, 5.0, n_damaged)


def _qc_biology(rng, n_states: int, overlap: float):
    """A function of basal states -> (mitochondrial logit shift, library log-shift) per cell,
    or ``None`` without ``overlap``: QC covariates that vary with the cell's biology."""
    if overlap <= 0:
        return None
    state_mt = rng.normal(0.0, 0.8 * overlap, n_states)
    state_library = rng.normal(0.0, 0.4 * overlap, n_states)

    def per_cell(states):
        n = len(states)
        return (state_mt[states] + rng.normal(0.0, 0.3 * overlap, n),
                state_library[states] + rng.normal(0.0, 0.3 * overlap, n))

    return per_cell


def _perturbseq_norm(x):
    x = np.asarray(x, dtype=float)
    return np.log2(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1) + 1)


def simulate_screen(
    n_cells: int = 5000,
    n_genes: int = 1000,
    n_singles: int = 10,
    n_combinations: int = 6,
    n_interacting: int = 2,
    latent_dim: int = 8,
    artifact_fraction: float = 0.12,
    control_fraction: float = 0.15,
    library_median: float = 2500.0,
    effect_scale: float = 1.5,
    n_truth_cells: int = 1000,
    n_states: int = 4,
    knockdown: float | None = None,
    direct_genes: int = 0,
    direct_scale: float = 0.7,
    keep_expected: bool = False,
    library_effect_scale: float = 0.0,
    interaction_programmes: bool = False,
    damage_signature: float = 0.0,
    qc_overlap: float = 0.0,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a CRISPR screen with known effects and injected artifacts.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix.
    n_singles
        Single-target perturbations ``P0 … P{n-1}`` (control is ``control``).
    n_combinations
        Two-target combinations ``Pa+Pb`` of distinct singles.
    n_interacting
        How many of the combinations get an interaction term beyond additivity.
    latent_dim
        Dimension of the true basal state.
    artifact_fraction
        Share of cells that receive an artifact, split evenly among
        ``damaged``, ``doublet`` and ``low_complexity``.
    n_states
        Basal states cluster around this many centres (cell-cycle-like).
    knockdown
        CRISPRi-like screens: the natural-log fold change of each single's own
        target gene (e.g. ``-2.0``; per target scaled by U(0.5, 1.5)). Singles
        are then named after their target genes (well-expressed genes).
    direct_genes, direct_scale
        Give each single, besides its latent effect, a direct log-fold effect
        of ±U(0.5, 1.5)·``direct_scale`` on ``direct_genes`` random genes
        (combinations add their singles'): effects outside the span of the
        low-dimensional latent, which a model can only express gene by gene.
        ``uns["truth"]["direct_effect"]`` holds them (singles × genes).
    keep_expected
        Also keep ``layers["clean_expected"]``: each cell's expected clean
        counts (library × proportions, dense), the noise-free target of
        counterfactual cleaning.
    library_effect_scale
        Give each single a natural-log shift of the library size drawn from
        N(0, ``library_effect_scale``) (combinations add their singles'): a
        perturbation that changes how much RNA a cell holds (KLF1 activation
        on Norman). The true ATEs are taken at each condition's libraries;
        ``uns["truth"]["library_effect"]`` holds the shifts (singles).
    interaction_programmes
        Genetic interactions of known kind, arising from how the latent
        programmes act on expression, not from a per-pair term
        (:func:`_programme_design`). Every pair of singles then has a known kind
        (``buffering``, ``synergy``, ``epistasis`` or ``additive``), kept in
        ``uns["truth"]["pairs"]`` and ``uns["truth"]["pair_kind"]``, with the true
        interaction ``ATE(A+B) − ATE(A) − ATE(B)`` of every pair, measured or not, in
        ``uns["truth"]["pair_interaction"]``. ``n_interacting`` is then unused.
    damage_signature
        Damaged cells with a realistic expression signature, not only a QC
        shift: a damaged cell keeps a share ``s ~ Beta(3, 5)`` of its
        cytoplasmic mRNA (a severity that varies, so mild damage passes QC),
        and gene ``g`` is kept with log-odds ``logit(s) + r_g``, where
        ``r_g ~ N(0, damage_signature)`` is how strongly the transcript is
        retained (nuclear, long-lived) and ribosomal-protein transcripts are
        lost faster (``r_g − damage_signature``); mitochondrial transcripts stay
        in their organelles. ``0`` (default): every non-mitochondrial gene thinned
        to 25 % and mitochondrial counts doubled, as before.
        ``uns["truth"]["damage_retention"]`` holds ``r_g``; ``obs["damage_kept"]``
        the severity ``s`` (1 for undamaged cells).
    qc_overlap
        Biological variation in the QC covariates, so that k·MAD rules flag
        clean cells and QC tails overlap between clean and damaged cells: each
        basal state gets its own mitochondrial log-share shift
        ``N(0, 0.8·qc_overlap)`` and library log-shift ``N(0, 0.4·qc_overlap)``,
        each cell its own on top (``N(0, 0.3·qc_overlap)`` both). The shifts
        are biology: they follow the cell's state, so its expression profile
        can tell them from damage. ``0`` (default): none.
    n_truth_cells
        Clean cells per condition drawn (common basal states) to compute the
        true average treatment effects in ``uns["truth"]["ate"]``.
    seed
        Same seed, same screen.

    Returns
    -------
    AnnData
        ``X``: observed counts (CSR); ``layers["clean"]``: clean twins; obs
        ``perturbation``, ``artifact_kind`` (``none`` for clean cells),
        ``is_artifact``, ``library_clean``; ``uns["truth"]``: latent effects,
        decoder, interaction combinations and true ATEs (conditions × genes).
    """
    rng = np.random.default_rng(seed)
    if interaction_programmes:
        design = _programme_design(rng, n_genes, n_singles, n_combinations, latent_dim,
                                   effect_scale)
    else:
        design = _screen_design(rng, n_genes, n_singles, n_combinations, n_interacting,
                                latent_dim, effect_scale, knockdown, direct_genes, direct_scale)
    programme = design.programme if interaction_programmes else (lambda u: u)
    genes, is_mt, conditions = design.genes, design.is_mt, design.conditions
    baseline, decoder, dispersion = design.baseline, design.decoder, design.dispersion
    latent_effect, condition_cis, interacting = (design.latent_effect, design.condition_cis,
                                                 design.interacting)
    singles, cis = design.singles, design.cis

    n_control = int(round(control_fraction * n_cells))
    rest = rng.integers(1, len(conditions), n_cells - n_control)
    cond_idx = rng.permutation(np.concatenate([np.zeros(n_control, int), rest]))

    def expected(cond_rows, z, library, shift=None, mt_shift=None):
        shift = latent_effect[cond_rows] if shift is None else shift
        logits = baseline + programme(z + shift) @ decoder + condition_cis[cond_rows]
        if mt_shift is not None:  # biological mitochondrial share (qc_overlap)
            logits = logits + np.outer(mt_shift, is_mt)
        prop = np.exp(logits - logits.max(1, keepdims=True))
        prop /= prop.sum(1, keepdims=True)
        return library[:, None] * prop

    def draw(cond_rows, z, library, shift=None, mt_shift=None):
        return _nb(rng, expected(cond_rows, z, library, shift, mt_shift), dispersion)

    # basal states cluster (cell-cycle-like states), so doublets of two states stand out
    centres = rng.normal(0.0, 1.5, (n_states, latent_dim))
    if interaction_programmes:  # programme dims start near their resting point in every state
        centres[:, :4] *= 0.2
    state = rng.integers(0, n_states, n_cells)
    basal = centres[state] + rng.normal(0.0, 0.6, (n_cells, latent_dim))
    library = library_median * np.exp(rng.normal(0.0, 0.35, n_cells))
    # drawn only when asked for, so screens without it keep their random stream
    single_library = (rng.normal(0.0, library_effect_scale, len(singles))
                      if library_effect_scale > 0 else np.zeros(len(singles)))
    shift = dict(zip(singles, single_library))
    condition_library = np.array([sum(shift.get(t, 0.0) for t in c.split("+")) for c in conditions])
    library = library * np.exp(condition_library[cond_idx])
    biology = _qc_biology(rng, n_states, qc_overlap)  # None without qc_overlap
    mt_shift = None
    if biology is not None:
        mt_shift, library_shift = biology(state)
        library = library * np.exp(library_shift)
    clean = draw(cond_idx, basal, library, mt_shift=mt_shift)

    observed = clean.copy()
    kind = np.array(["none"] * n_cells, dtype=object)
    n_art = int(round(artifact_fraction * n_cells))
    art_cells = rng.choice(n_cells, n_art, replace=False)
    for j, cell in enumerate(art_cells):
        kind[cell] = ARTIFACT_KINDS[j % len(ARTIFACT_KINDS)]
    damaged = np.flatnonzero(kind == "damaged")
    damage_kept = np.ones(n_cells)
    retention = np.zeros(n_genes)
    if damage_signature > 0:
        retention, damage_kept[damaged] = _damage_design(rng, genes, damage_signature, len(damaged))
        keep = _sigmoid(_logit(damage_kept[damaged])[:, None] + retention[None, ~is_mt])
        observed[np.ix_(damaged, ~is_mt)] = rng.binomial(clean[np.ix_(damaged, ~is_mt)], keep)
    else:
        observed[np.ix_(damaged, ~is_mt)] = rng.binomial(clean[np.ix_(damaged, ~is_mt)], 0.25)
        observed[np.ix_(damaged, is_mt)] = clean[np.ix_(damaged, is_mt)] * 2
    doublets = np.flatnonzero(kind == "doublet")
    partners = rng.integers(0, n_cells, len(doublets))
    observed[doublets] = clean[doublets] + clean[partners]
    low = np.flatnonzero(kind == "low_complexity")
    observed[low] = rng.binomial(clean[low], 0.12)

    # true ATE: clean cells under each condition from common basal states
    state_truth = rng.integers(0, n_states, n_truth_cells)
    z_truth = centres[state_truth] + rng.normal(0.0, 0.6, (n_truth_cells, latent_dim))
    lib_truth = library_median * np.exp(rng.normal(0.0, 0.35, n_truth_cells))
    mt_truth = None
    if biology is not None:
        mt_truth, library_shift = biology(state_truth)
        lib_truth = lib_truth * np.exp(library_shift)
    norm_means = np.stack([
        _perturbseq_norm(draw(np.full(n_truth_cells, c), z_truth,
                              lib_truth * np.exp(condition_library[c]), mt_shift=mt_truth)).mean(0)
        for c in range(len(conditions))
    ])
    ate = norm_means[1:] - norm_means[0]
    if interaction_programmes:  # every pair of singles, measured or not
        control_rows = np.zeros(n_truth_cells, int)
        pair_ate = np.stack([
            _perturbseq_norm(draw(control_rows, z_truth, lib_truth,
                                  design.single_effect[a] + design.single_effect[b],
                                  mt_shift=mt_truth)).mean(0)
            for a, b in design.all_pairs]) - norm_means[0]
        # the singles are conditions 1..n, so single i's ATE is row i of ``ate``
        pair_interaction = np.stack([pair_ate[j] - ate[a] - ate[b]
                                     for j, (a, b) in enumerate(design.all_pairs)])

    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical([conditions[c] for c in cond_idx], categories=conditions),
            "artifact_kind": pd.Categorical(kind, categories=["none", *ARTIFACT_KINDS]),
            "is_artifact": kind != "none",
            "library_clean": clean.sum(1),
            "damage_kept": damage_kept,
        },
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(observed.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=genes),
        layers={"clean": sp.csr_matrix(clean.astype(np.float32))},
    )
    if keep_expected:
        adata.layers["clean_expected"] = expected(cond_idx, basal, library,
                                                  mt_shift=mt_shift).astype(np.float32)
    adata.uns["truth"] = {
        "conditions": np.array(conditions),
        "latent_effect": latent_effect,
        "basal": basal,
        "decoder": decoder,
        "baseline": baseline,
        "dispersion": dispersion,
        "interacting": np.array(interacting),
        "ate": ate,
        "ate_conditions": np.array(conditions[1:]),
        "doublet_partner": np.stack([doublets, partners], 1),
        "target_gene": np.array(singles if knockdown is not None else []),
        "knockdown": cis,
        "direct_effect": design.direct,
        "library_effect": single_library,
        "damage_retention": retention,
        "seed": seed,
    }
    if interaction_programmes:
        adata.uns["truth"].update(
            pairs=np.array([f"{singles[a]}+{singles[b]}" for a, b in design.all_pairs]),
            pair_kind=np.array(design.pair_kind), pair_interaction=pair_interaction,
            single_kind=np.array(design.single_kind))
    adata.uns["control_label"] = "control"
    adata.uns["combination_separator"] = "+"
    return adata


PROGRAMME_KINDS = ("buffering", "synergy", "gate", "gated", "linear")


def _programme_design(rng, n_genes, n_singles, n_combinations, latent_dim, effect_scale):
    """A screen whose genetic interactions come from how latent programmes act on expression.

    The decoder reads ``programme(z + effect)`` instead of ``z + effect``: dimension 0
    saturates (``0.75s·tanh(u/0.75s)``, s the effect scale), dimension 1 switches on past a threshold (``softplus``), and
    dimension 3 acts only while the gate, dimension 2, is open (``u3·sigmoid(3(u2 + 1))``); the
    rest are linear. Each single pushes one programme dimension (groups of singles share one)
    and one random linear dimension, so a pair's kind follows from its singles' groups: two
    saturating pushes buffer, two threshold pushes are synergistic, a gate closer with a gated
    push is epistatic (the gated effect vanishes), any other pair is additive up to the
    normalisation. Measured combinations are a random share of all pairs.
    """
    if latent_dim < 6:
        raise ValueError(f"latent_dim={latent_dim}: programme screens need at least 6 dims")
    base = _screen_design(rng, n_genes, n_singles, 0, 0, latent_dim, effect_scale, None)
    base.decoder[:4] *= 1.5  # programmes move more genes than the linear dims
    s = effect_scale
    groups = np.array([PROGRAMME_KINDS[i % 5] for i in range(n_singles)], dtype=object)
    rng.shuffle(groups)
    push = {"buffering": (0, 1), "synergy": (1, 1), "gate": (2, -1), "gated": (3, 0),
            "linear": (None, 0)}
    single_effect = np.zeros((n_singles, latent_dim))
    for i, kind in enumerate(groups):
        dim, sign = push[kind]
        if dim is not None:
            sign = sign or rng.choice([-1, 1])
            single_effect[i, dim] = sign * rng.uniform(0.8, 1.2) * s
        linear = rng.integers(4, latent_dim)
        single_effect[i, linear] = rng.choice([-1, 1]) * rng.uniform(0.7, 1.3) * s
    all_pairs = list(itertools.combinations(range(n_singles), 2))
    kind_of = {("buffering", "buffering"): "buffering", ("synergy", "synergy"): "synergy",
               ("gate", "gated"): "epistasis", ("gated", "gate"): "epistasis"}
    pair_kind = [kind_of.get((groups[a], groups[b]), "additive") for a, b in all_pairs]
    measured = sorted(rng.choice(len(all_pairs), min(n_combinations, len(all_pairs)),
                                 replace=False))
    singles = base.singles
    conditions = (["control"] + singles
                  + [f"{singles[all_pairs[j][0]]}+{singles[all_pairs[j][1]]}" for j in measured])
    latent_effect = np.zeros((len(conditions), latent_dim))
    latent_effect[1:1 + n_singles] = single_effect
    for row, j in enumerate(measured, start=1 + n_singles):
        latent_effect[row] = single_effect[all_pairs[j][0]] + single_effect[all_pairs[j][1]]

    def programme(u):
        out = u.copy()
        out[..., 0] = 0.75 * s * np.tanh(u[..., 0] / (0.75 * s))
        out[..., 1] = np.logaddexp(0.0, 2.0 * (u[..., 1] - s)) / 2.0
        out[..., 3] = u[..., 3] / (1.0 + np.exp(-3.0 * (u[..., 2] + 1.0)))
        return out

    base.conditions, base.latent_effect = conditions, latent_effect
    base.condition_cis = np.zeros((len(conditions), n_genes))
    base.interacting = [conditions[1 + n_singles + r] for r, j in enumerate(measured)
                        if pair_kind[j] != "additive"]
    base.single_effect, base.all_pairs, base.pair_kind = single_effect, all_pairs, pair_kind
    base.single_kind, base.programme = list(groups), programme
    return base


def _screen_design(rng, n_genes, n_singles, n_combinations, n_interacting, latent_dim,
                   effect_scale, knockdown, direct_genes=0, direct_scale=0.7):
    """Genes, baseline, decoder, dispersion, effects and conditions of a screen (one RNG stream)."""
    genes = _gene_names(n_genes)
    is_mt = np.array([g.startswith("MT-") for g in genes])
    is_ribo = np.array([g.startswith(("RPL", "RPS")) for g in genes])
    is_hb = np.array([g.startswith("HB") for g in genes])

    baseline = rng.normal(0.0, 1.0, n_genes)
    baseline[is_mt] += 2.5
    baseline[is_ribo] += 2.0
    baseline[is_hb] -= 4.0  # haemoglobin barely expressed, as in non-erythroid cells
    decoder = rng.normal(0.0, 1.0 / np.sqrt(latent_dim), (latent_dim, n_genes))
    decoder[:, is_mt | is_ribo] *= 0.1  # housekeeping-like groups vary little
    dispersion = rng.gamma(4.0, 2.0, n_genes)

    singles = [f"P{i}" for i in range(n_singles)]
    cis = np.zeros((n_singles, n_genes))
    if knockdown is not None:
        candidates = np.flatnonzero(~(is_mt | is_ribo | is_hb))
        targets = candidates[np.argsort(-baseline[candidates])[:n_singles]]
        singles = [genes[t] for t in targets]
        cis[np.arange(n_singles), targets] = knockdown * rng.uniform(0.5, 1.5, n_singles)
    single_effect = np.zeros((n_singles, latent_dim))
    for i in range(n_singles):
        dims = rng.choice(latent_dim, size=2, replace=False)
        single_effect[i, dims] = rng.choice([-1, 1], 2) * rng.uniform(0.7, 1.3, 2) * effect_scale
    pairs = set()
    while len(pairs) < n_combinations:
        a, b = sorted(rng.choice(n_singles, 2, replace=False))
        pairs.add((int(a), int(b)))
    pairs = sorted(pairs)
    conditions = ["control"] + singles + [f"{singles[a]}+{singles[b]}" for a, b in pairs]
    latent_effect = np.zeros((len(conditions), latent_dim))
    latent_effect[1:1 + n_singles] = single_effect
    interacting = []
    for j, (a, b) in enumerate(pairs):
        row = 1 + n_singles + j
        latent_effect[row] = single_effect[a] + single_effect[b]
        if j < n_interacting:
            dim = rng.integers(latent_dim)
            latent_effect[row, dim] += effect_scale * rng.choice([-1, 1])
            interacting.append(conditions[row])
    # drawn last, so that screens without direct effects keep their random stream
    direct = np.zeros((n_singles, n_genes))
    if direct_genes:
        candidates = np.flatnonzero(~(is_mt | is_ribo | is_hb))
        for i in range(n_singles):
            genes_i = rng.choice(candidates, size=direct_genes, replace=False)
            direct[i, genes_i] = (rng.choice([-1, 1], direct_genes)
                                  * rng.uniform(0.5, 1.5, direct_genes) * direct_scale)
    # gene-level effects (knockdown and direct) of each condition: combinations add their singles'
    single_genes = cis + direct
    condition_cis = np.zeros((len(conditions), n_genes))
    condition_cis[1:1 + n_singles] = single_genes
    for j, (a, b) in enumerate(pairs):
        condition_cis[1 + n_singles + j] = single_genes[a] + single_genes[b]

    return SimpleNamespace(
        genes=genes, is_mt=is_mt, is_ribo=is_ribo, is_hb=is_hb, baseline=baseline,
        decoder=decoder, dispersion=dispersion, singles=singles, cis=cis,
        conditions=conditions, latent_effect=latent_effect, condition_cis=condition_cis,
        interacting=interacting, direct=direct)
