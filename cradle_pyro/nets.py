"""Neural networks: the decoder, the basal encoder and the effect network.

The basal encoder's first layer is linear in ``[x, perturbation offset,
artifact offset]`` and is kept as three separate linear maps, so the
expensive ``x`` part (genes → hidden) can be computed once per cell and shared
by the factual and counterfactual encodings (DESIGN.md, compute budget).

Example
-------
>>> import torch
>>> enc = BasalEncoder(n_genes=20, latent_dim=3, hidden_dim=8, perturbation_dim=3, artifact_dim=3)
>>> hx = enc.x_part(torch.randn(5, 20))
>>> loc, scale = enc.head(hx, torch.zeros(5, 3), torch.zeros(5, 3))
>>> tuple(loc.shape), bool((scale > 0).all())
((5, 3), True)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(sizes, final_activation=False) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers += [nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers)


def log_standardise(counts, library, gene_mean, gene_std):
    """(log1p(1e4·x/library) − mean) / std, the encoders' view of counts."""
    return (torch.log1p(1e4 * counts / library.clamp(min=1.0).unsqueeze(-1)) - gene_mean) / gene_std


class Decoder(nn.Module):
    """Latent input → gene logits (softmax gives expression proportions)."""

    def __init__(self, input_dim, n_genes, hidden_dim, n_layers=1):
        super().__init__()
        self.net = mlp([input_dim] + [hidden_dim] * n_layers + [n_genes])

    def forward(self, z, weights=None):
        """Gene logits. ``weights`` maps a layer's index in ``net`` to weights
        (``... × out × in``, batch dims broadcasting with the cells') that replace that
        layer's own, where the model samples them."""
        if not weights:
            return self.net(z)
        x = z
        for i, layer in enumerate(self.net):
            if i in weights:
                x = _linear(x, weights[i]) + layer.bias
            else:
                x = layer(x)
        return x


def _linear(x, weight):
    """``x @ weight.T`` where ``weight`` (``... × 1 × out × in``, or ``out × in``) has one
    matrix per particle, shared by the particle's cells (``x``: ``... × cells × in``)."""
    if weight.dim() > 2 and weight.shape[-3] == 1:
        weight = weight.squeeze(-3)     # a batched matmul, not one per cell
        return x @ weight.transpose(-1, -2)
    return (x.unsqueeze(-2) @ weight.transpose(-1, -2)).squeeze(-2)


class BasalEncoder(nn.Module):
    """q(basal | x, offsets): a first layer split by input, then an MLP head."""

    def __init__(self, n_genes, latent_dim, hidden_dim, perturbation_dim=0, artifact_dim=0,
                 n_layers=1):
        super().__init__()
        self.x_layer = nn.Linear(n_genes, hidden_dim)
        self.perturbation_layer = (nn.Linear(perturbation_dim, hidden_dim, bias=False)
                                   if perturbation_dim else None)
        self.artifact_layer = (nn.Linear(artifact_dim, hidden_dim, bias=False)
                               if artifact_dim else None)
        self.body = mlp([hidden_dim] * n_layers + [2 * latent_dim])
        self.norm = nn.LayerNorm(hidden_dim)
        self.latent_dim = latent_dim

    def x_part(self, x_standardised):
        """The genes → hidden map, the costly part, shared between encodings."""
        return self.x_layer(x_standardised)

    def head(self, hx, perturbation_offset=None, artifact_offset=None):
        h = hx
        if self.perturbation_layer is not None and perturbation_offset is not None:
            h = h + self.perturbation_layer(perturbation_offset)
        if self.artifact_layer is not None and artifact_offset is not None:
            h = h + self.artifact_layer(artifact_offset)
        out = self.body(F.relu(self.norm(h)))
        loc, raw_scale = out.split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4


class EffectNet(nn.Module):
    """q(effect_p | mask_p): an MLP of [mask_p, one-hot(p)] → (loc, scale)."""

    def __init__(self, n_perturbations, latent_dim, hidden_dim, n_layers=1):
        super().__init__()
        self.n_perturbations = n_perturbations
        self.net = mlp([latent_dim + n_perturbations] + [hidden_dim] * n_layers + [2 * latent_dim])
        self.latent_dim = latent_dim

    def forward(self, mask):
        eye = torch.eye(self.n_perturbations, device=mask.device, dtype=mask.dtype)
        onehot = eye.expand(*mask.shape[:-1], self.n_perturbations)
        loc, raw_scale = self.net(torch.cat([mask, onehot], -1)).split(self.latent_dim, -1)
        return loc, F.softplus(raw_scale - 2.0) + 1e-4
