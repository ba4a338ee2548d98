"""The cradle-paper preset: the published model's settings, runnable from Python and the CLI."""

import numpy as np
import pytest
import torch

from cradle_pyro import CradleInputError, PerturbationData, simulate_screen
from cradle_pyro.inference import fit
from cradle_pyro.inference.objective import CradleELBO
from cradle_pyro.inference.presets import PRESETS, preset


def test_cradle_paper_holds_the_published_settings():
    mc, tc = preset("cradle-paper")
    assert (mc.latent_dim, mc.hidden_dim, mc.effect_encoder_layers, mc.mask_prob) == (200, 400, 4, 0.01)
    assert not (mc.gene_effects or mc.target_effects or mc.library_effects or mc.residual_encoder)
    assert (tc.lr, tc.batch_size, tc.beta, tc.independence, tc.guide_temperature) == (3e-4, 512, 0.5, 0.0, 1.0)
    assert (tc.alignment_weighting, tc.class_balance, tc.select, tc.patience) == \
        ("published", "published", "elbo", 50)
    assert PRESETS["cradle-paper"]["effects"]["basal"] == "prior"
    mc, tc = preset("cradle-paper", seed=3, gene_effects=True)
    assert tc.seed == 3 and mc.gene_effects
    with pytest.raises(CradleInputError, match="unknown setting"):
        preset("cradle-paper", wings=2)
    with pytest.raises(CradleInputError, match="choose one of"):
        preset("cradle-2031")


def test_published_class_balance_weighs_each_class_by_the_other_s_batch_share():
    loss = CradleELBO(class_balance="published")
    artifact = torch.tensor([[1.0], [0.0], [0.0], [0.0]])       # batch artifact share 1/4
    scales = loss.site_scales(torch.ones(4, 2), artifact, None)
    np.testing.assert_allclose(scales["counts"].numpy(), [0.75, 0.25, 0.25, 0.25])


def test_cradle_paper_trains_and_its_encoder_is_not_residual():
    screen = simulate_screen(n_cells=500, n_genes=60, n_singles=4, n_combinations=2, seed=1)
    data = PerturbationData.from_anndata(screen, doublets=False, split="unseen-combinations",
                                         heldout_fraction=0.5)
    mc, tc = preset("cradle-paper", epochs=2, latent_dim=8, hidden_dim=32, progress=False)
    run = fit(data, tc, mc)
    assert len(run.history) == 2 and np.isfinite(run.history["loss"]).all()
    assert len(run.guide.effect_net.net) == 3 * 4 + 1          # 4 hidden layers, then the head
    assert run.guide.temperature == 1.0
    # not residual: the basal state's mean does not move with the perturbation offset it is given
    from cradle_pyro.guides import CorrelatedGuide

    g = run.guide
    assert isinstance(g, CorrelatedGuide)
    counts = torch.as_tensor(data.counts[:3].toarray(), dtype=torch.float32)
    library = counts.sum(-1)
    hx = g.basal_features(counts, library)
    d = mc.latent_dim
    effect, mask = torch.zeros(data.n_perturbations, d), torch.zeros(data.n_perturbations, d)
    a = g.basal_distribution(hx, torch.zeros(3, data.n_perturbations), None, effect, mask, None).loc
    run.model.config.residual_encoder = True
    b = g.basal_distribution(hx, torch.zeros(3, data.n_perturbations), None, effect, mask, None).loc
    torch.testing.assert_close(a, b)    # with no offset both forms agree ...
    dosage = torch.zeros(3, data.n_perturbations)
    dosage[:, 0] = 1
    effect[0] = 1.0
    mask[0] = 1.0
    residual = g.basal_distribution(hx, dosage, None, effect, mask, None).loc
    run.model.config.residual_encoder = False
    plain = g.basal_distribution(hx, dosage, None, effect, mask, None).loc
    assert not torch.allclose(residual, plain)   # ... and differ by the offset when there is one


def test_train_preset_from_the_command_line(tmp_path):
    import json

    from cradle_pyro.inference.cli import main

    screen = tmp_path / "screen.h5ad"
    simulate_screen(n_cells=300, n_genes=40, n_singles=3, n_combinations=1, seed=0).write_h5ad(screen)
    out = tmp_path / "paper"
    assert main(["train", str(screen), "--out", str(out), "--preset", "cradle-paper", "--epochs", "1",
                 "--latent-dim", "4", "--hidden-dim", "16", "--no-doublets", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    # the preset's settings, with the command line's changes on top
    assert config["model"]["effect_encoder_layers"] == 4 and not config["model"]["residual_encoder"]
    assert config["model"]["latent_dim"] == 4 and config["train"]["epochs"] == 1
    assert config["train"]["class_balance"] == "published" and config["train"]["lr"] == 3e-4
    assert "preset: cradle-paper" in (out / "resolved_config.yaml").read_text()
