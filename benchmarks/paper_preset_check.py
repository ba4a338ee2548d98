"""The cradle-paper preset beside the published code: parameters per part, and the loss's terms.

Builds the published CRADLE-VAE model and guide (dmis-lab/CRADLE-VAE, from a
checkout given with ``--published``; its code is imported from there, never
copied here) at the sizes of ``demo/cradle_vae_norman.yaml`` for the Norman
subset in ``../shared/data`` (P targets, 500 genes, one artifact kind), and
``cradle_pyro``'s ``preset("cradle-paper")`` on the same data; counts the
trainable parameters of each part of both and writes
``benchmarks/results/paper_preset_check.json``.

The published data modules import packages this project does not need
(pytorch_lightning, parmap, ...); the script stands empty modules in for them,
since only the model and guide classes are used.

    git clone https://github.com/dmis-lab/CRADLE-VAE /tmp/cradle_pub   # or the fetch tool
    python benchmarks/paper_preset_check.py --published /tmp/cradle_pub
"""

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import anndata as ad
import torch

from cradle_pyro import PerturbationData
from cradle_pyro.guides import make_guide
from cradle_pyro.inference.presets import preset
from cradle_pyro.model import CradleModel

ROOT = Path(__file__).resolve().parents[1]
NORMAN = ROOT.parent / "shared" / "data" / "norman2019_k562_crispra_subset.h5ad"
OUT = ROOT / "benchmarks" / "results" / "paper_preset_check.json"


def published_parts(path: Path, n_treatments, n_genes, n_qc) -> dict:
    """Trainable parameters of each part of the published model and guide (Norman demo sizes)."""
    sys.path.insert(0, str(path))
    for name in ("pytorch_lightning", "parmap", "rapids_singlecell", "wandb", "redun", "cupy",
                 "cupyx", "cupyx.scipy", "cupyx.scipy.sparse"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.LightningDataModule = object
            stub.LightningModule = torch.nn.Module
            sys.modules[name] = stub
    from cradle_vae.models.cradle_vae.guides.correlated_normal_guide import (
        cradle_vae_CorrelatedNormalGuide)
    from cradle_vae.models.cradle_vae.model import cradle_vae_Model

    model = cradle_vae_Model(n_latent=200, n_treatments=n_treatments, n_phenos=n_genes, n_qc=n_qc,
                             mask_prior_prob=0.01, embedding_prior_scale=1,
                             likelihood_key="library_nb", decoder_n_layers=1, decoder_n_hidden=400,
                             sum_mode=False)
    guide = cradle_vae_CorrelatedNormalGuide(
        n_latent=200, n_treatments=n_treatments, n_phenos=n_genes, n_qc=n_qc,
        basal_encoder_n_layers=1, basal_encoder_n_hidden=400,
        basal_encoder_input_normalization=None, embedding_encoder_n_layers=4,
        embedding_encoder_n_hidden=400, x_normalization_stats=None, gs_temperature=1.0)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    return {"decoder (with NB concentration)": count(model.decoder),
            "basal encoder": count(guide.z_basal_encoder),
            "effect encoder q(effect | mask)": count(guide.embedding_encoder),
            "artifact-effect encoder": count(guide.qc_encoder),
            "mask logits": guide.param_dict["q_mask_logits"].numel(),
            "total": count(model) + count(guide)}


def our_parts(data) -> dict:
    mc, tc = preset("cradle-paper")
    model = CradleModel.from_data(data, mc)
    guide = make_guide(tc.guide, model, data.gene_mean, data.gene_std,
                       temperature=tc.guide_temperature)
    model_params = dict(model.named_parameters())
    count = lambda prefix, named: sum(p.numel() for n, p in named.items() if n.startswith(prefix))
    guide_params = dict(guide.named_parameters())
    artifact = sum(p.numel() for n, p in guide_params.items() if "artifact_effect" in n)
    return {"decoder (with NB concentration)": count("decoder", model_params)
            + count("log_dispersion", model_params),
            "basal encoder": count("encoder", guide_params),
            "effect encoder q(effect | mask)": count("effect_net", guide_params),
            "artifact-effect guide": artifact,
            "mask logits": count("mask_logits", guide_params),
            "total": sum(p.numel() for p in model.parameters())
            + sum(p.numel() for p in guide.parameters())}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--published", required=True, help="checkout of dmis-lab/CRADLE-VAE")
    args = ap.parse_args()
    data = PerturbationData.from_anndata(ad.read_h5ad(NORMAN), split="unseen-combinations",
                                         heldout_fraction=1.0)
    n_qc = data.n_artifacts
    theirs = published_parts(Path(args.published), data.n_perturbations, data.n_genes, n_qc)
    ours = our_parts(data)
    commit = subprocess.run(["git", "-C", args.published, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown (not a git checkout)"
    result = {"data": NORMAN.name, "sizes": {"targets": data.n_perturbations,
                                             "genes": data.n_genes, "artifact_kinds": n_qc},
              "published_commit": commit, "published": theirs, "cradle_paper": ours}
    OUT.write_text(json.dumps(result, indent=2))
    for part in theirs:
        print(f"{part:35s} published {theirs[part]:>10,d}   cradle-paper "
              f"{ours.get(part, ours.get(part.replace('encoder', 'guide'), 0)):>10,d}")


if __name__ == "__main__":
    main()
