import numpy as np

from cradle_pyro import simulate_screen


def test_simulator_is_seeded_and_keeps_clean_twins():
    a = simulate_screen(n_cells=400, n_genes=120, seed=5)
    b = simulate_screen(n_cells=400, n_genes=120, seed=5)
    c = simulate_screen(n_cells=400, n_genes=120, seed=6)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    clean = a.obs["artifact_kind"] == "none"
    # clean cells are their own twins; artifact cells differ from theirs
    assert (a.X[clean.to_numpy()] != a.layers["clean"][clean.to_numpy()]).nnz == 0
    assert (a.X[~clean.to_numpy()] != a.layers["clean"][~clean.to_numpy()]).nnz > 0


def test_injected_artifacts_have_their_signature(standard_screen):
    a = standard_screen
    lib = np.asarray(a.X.sum(1)).ravel()
    lib_clean = np.asarray(a.layers["clean"].sum(1)).ravel()
    kind = a.obs["artifact_kind"].to_numpy()
    mt = a.var_names.str.startswith("MT-")
    pct_mt = np.asarray(a.X[:, mt].sum(1)).ravel() / lib
    pct_mt_clean = np.asarray(a.layers["clean"][:, mt].sum(1)).ravel() / lib_clean
    assert np.all(lib[kind == "damaged"] < lib_clean[kind == "damaged"])
    assert np.all(pct_mt[kind == "damaged"] > pct_mt_clean[kind == "damaged"])
    assert np.all(lib[kind == "doublet"] > lib_clean[kind == "doublet"])
    assert np.median(lib[kind == "low_complexity"] / lib_clean[kind == "low_complexity"]) < 0.2
    for prefix in ("MT-", "RP", "HB"):
        assert a.var_names.str.startswith(prefix).any()


def test_truth_holds_effects_and_ates(standard_screen):
    truth = standard_screen.uns["truth"]
    conds = list(truth["conditions"])
    assert conds[0] == "control" and len(truth["interacting"]) == 2
    assert truth["ate"].shape == (len(conds) - 1, standard_screen.n_vars)
    # each single shifts exactly two latent dimensions
    singles = [i for i, c in enumerate(conds) if c != "control" and "+" not in c]
    assert all((np.abs(truth["latent_effect"][i]) > 0).sum() == 2 for i in singles)
    # perturbed conditions move expression; the ATE is not noise around zero
    assert np.abs(truth["ate"]).max(1).min() > 0.3


def test_programme_screens_have_interactions_of_known_kind():
    adata = simulate_screen(600, 150, n_singles=10, n_combinations=8, interaction_programmes=True,
                            n_truth_cells=400, seed=3)
    truth = adata.uns["truth"]
    kinds, interaction = truth["pair_kind"], truth["pair_interaction"]
    assert len(truth["pairs"]) == 45 and interaction.shape == (45, 150)
    assert {"buffering", "synergy", "epistasis", "additive"} <= set(kinds)
    size = np.linalg.norm(interaction, axis=1)
    # the mechanisms' pairs interact more than the additive ones, kind by kind
    for kind in ("buffering", "synergy", "epistasis"):
        assert size[kinds == kind].mean() > 1.3 * np.median(size[kinds == "additive"]), kind
    measured = [c for c in adata.obs["perturbation"].cat.categories if "+" in c]
    assert len(measured) == 8 and set(measured) <= set(truth["pairs"])


def _qc_flags(adata):
    from cradle_pyro import PerturbationData

    data = PerturbationData.from_anndata(adata, doublets=False, seed=0)
    kind = adata.obs["artifact_kind"].astype(str).reindex(data.obs_names).to_numpy()
    return kind, data.artifact.max(1) > 0, data


def test_qc_overlap_makes_k_mad_flag_clean_cells_by_their_biology():
    plain = simulate_screen(n_cells=1500, n_genes=200, seed=1)
    overlap = simulate_screen(n_cells=1500, n_genes=200, seed=1, qc_overlap=1.0)
    kind0, flag0, _ = _qc_flags(plain)
    kind1, flag1, data = _qc_flags(overlap)
    # the tails overlap: more clean cells flagged, more damaged cells missed
    assert flag1[kind1 == "none"].sum() > 2 * flag0[kind0 == "none"].sum()
    assert flag1[kind1 == "damaged"].mean() < flag0[kind0 == "damaged"].mean() - 0.1
    # the damaged-looking share is biology: the clean twin of a flagged clean cell has it too
    mt = np.array([g.startswith("MT-") for g in overlap.var_names])
    twin = overlap[data.obs_names].layers["clean"].toarray()
    share = twin[:, mt].sum(1) / twin.sum(1)
    clean = kind1 == "none"
    assert share[clean & flag1].mean() > 1.5 * share[clean & ~flag1].mean()


def test_damage_signature_is_graded_and_gene_by_gene():
    a = simulate_screen(n_cells=1200, n_genes=200, seed=4, damage_signature=1.0)
    damaged = (a.obs["artifact_kind"] == "damaged").to_numpy()
    kept = a.obs["damage_kept"].to_numpy()
    assert (kept[~damaged] == 1).all() and kept[damaged].std() > 0.08
    assert 0.2 < kept[damaged].mean() < 0.5
    x, twin = a.X.toarray()[damaged], a.layers["clean"].toarray()[damaged]
    ribo = np.array([g.startswith(("RPL", "RPS")) for g in a.var_names])
    other = ~ribo & ~np.array([g.startswith("MT-") for g in a.var_names])
    # ribosomal-protein transcripts leave a leaky cell first
    assert x[:, ribo].sum() / twin[:, ribo].sum() < 0.8 * x[:, other].sum() / twin[:, other].sum()
    retention = a.uns["truth"]["damage_retention"]
    kept_share = x[:, other].sum(0) / np.maximum(twin[:, other].sum(0), 1)
    well = twin[:, other].sum(0) > 200
    assert np.corrcoef(retention[other][well], kept_share[well])[0, 1] > 0.6
    # off by default: the old screen, draw for draw
    b = simulate_screen(n_cells=1200, n_genes=200, seed=4)
    assert (b.obs["damage_kept"] == 1).all() and not b.uns["truth"]["damage_retention"].any()
