"""MixStyle inside the image tower (Zhou et al., "Domain Generalization with MixStyle",
ICLR 2021): after the early stages of a ResNet image tower (``layer1``, ``layer2``), a
share of the batch's feature maps take a mix of another sample's per-channel mean and
standard deviation, ``lam * own + (1 - lam) * other`` with ``lam ~ Beta(alpha, alpha)``.
Early feature statistics carry a picture's style (camera, exposure, noise, blur), its
content stays: the model learns attributes that do not depend on the style. The paper's
setting: layers 1-2 (or 1-3), probability 0.5, alpha 0.1, statistics detached from the
graph. ``train --feature-style-mix P`` (0: off); ``--style-mix`` is the same idea on the
input pixels.

Active only inside ``FeatureStyleMix.mixing(generator)`` (the training step's forward),
with the module in training mode: validation, encoding and the consistency loss's clean
view see the tower unchanged. Every random draw comes from the step's generator (on the
CPU), so a run is deterministic given its seed, on every rank alike.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import TrafficRetrievalError

STYLE_LAYERS = ("layer1", "layer2")  # open_clip's ModifiedResNet stages (timm ResNets name theirs the same, under ``trunk``)


def style_layers(model) -> list:
    """The image tower's early ResNet stages, or a one-line error for a tower without them (ViTs)."""
    visual = getattr(model, "visual", model)
    owner = visual if all(hasattr(visual, name) for name in STYLE_LAYERS) else getattr(visual, "trunk", None)
    if owner is None or not all(hasattr(owner, name) for name in STYLE_LAYERS):
        raise TrafficRetrievalError(f"feature_style_mix needs a ResNet image tower (stages {', '.join(STYLE_LAYERS)}); "
                                    f"{type(visual).__name__} has none: use --style-mix (at the input) instead")
    return [getattr(owner, name) for name in STYLE_LAYERS]


def mix_feature_style(features, generator, probability: float, alpha: float = 0.1):
    """MixStyle of a NCHW feature batch: a ``probability`` share of the samples take a mix of
    their own and a random partner's per-channel mean and std (statistics detached)."""
    import torch

    from .augment import _beta_samples

    count = len(features)
    if probability <= 0 or count < 2:
        return features
    chosen = (torch.rand(count, generator=generator) < probability).to(features.device)
    partners = torch.randperm(count, generator=generator).to(features.device)
    lam = _beta_samples(alpha, count, generator).to(features.device).view(count, 1, 1, 1)
    if not bool(chosen.any()):
        return features
    values = features.float()
    mean = values.mean(dim=(2, 3), keepdim=True).detach()
    std = (values.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt().detach()
    mixed = (values - mean) / std * (lam * std + (1 - lam) * std[partners]) + lam * mean + (1 - lam) * mean[partners]
    return torch.where(chosen.view(count, 1, 1, 1), mixed, values).to(features.dtype)


class FeatureStyleMix:
    """Forward hooks on the tower's early stages that apply ``mix_feature_style`` while
    ``mixing(generator)`` is active and the stage is training."""

    def __init__(self, model, probability: float, alpha: float = 0.1):
        self.probability, self.alpha = probability, alpha
        self._generator = None
        self._handles = [layer.register_forward_hook(self._hook) for layer in style_layers(model)]

    def _hook(self, module, inputs, output):
        if self._generator is None or not module.training:
            return output
        return mix_feature_style(output, self._generator, self.probability, self.alpha)

    @contextmanager
    def mixing(self, generator):
        self._generator = generator
        try:
            yield
        finally:
            self._generator = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
