"""MixStyle inside the image tower (``train --feature-style-mix``, issue #14): the mixing
math, the hooks' scope (training steps only), one training step and the CLI's checks."""

import dataclasses
import math

import pytest
import torch

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.model.factory import create_model
from traffic_retrieval.train.feature_style import FeatureStyleMix, mix_feature_style, style_layers
from traffic_retrieval.train.loop import train_step

from test_trainer_parts import fresh_run, tiny, weights  # noqa: F401  (tiny: the module fixture)


def features(n=4, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, 5, 5, generator=generator) * torch.arange(1, n + 1).view(n, 1, 1, 1) + torch.arange(n).view(n, 1, 1, 1)


def test_mixing_moves_each_chosen_sample_between_its_own_and_a_partners_statistics():
    x = features()
    assert mix_feature_style(x, torch.Generator().manual_seed(0), 0.0) is x
    single = x[:1]
    assert mix_feature_style(single, torch.Generator().manual_seed(0), 1.0) is single  # one sample: no partner
    mixed = mix_feature_style(x, torch.Generator().manual_seed(1), 1.0)
    again = mix_feature_style(x, torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(mixed, again) and mixed.shape == x.shape  # deterministic given the generator
    mean, own_std = x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)
    new_mean, new_std = mixed.mean(dim=(2, 3)), mixed.std(dim=(2, 3), unbiased=False)
    assert ((new_mean >= mean.min(0).values - 1e-4) & (new_mean <= mean.max(0).values + 1e-4)).all()  # convex mixes of the batch's means
    assert ((new_std >= own_std.min(0).values - 1e-3) & (new_std <= own_std.max(0).values + 1e-3)).all()
    # the normalised content is kept
    normalise = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)
    assert torch.allclose(normalise(mixed), normalise(x), atol=1e-3)
    assert not torch.allclose(mixed, x)


def test_gradients_flow_through_the_content_not_the_statistics():
    x = features().requires_grad_()
    mixed = mix_feature_style(x, torch.Generator().manual_seed(1), 1.0)
    mixed.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_hooks_mix_only_inside_a_training_step():
    torch.manual_seed(0)
    loaded = create_model("TR-Tiny-RN")
    model = loaded.model
    images = torch.rand(4, 3, 80, 80)
    mixer = FeatureStyleMix(model, 1.0)
    with torch.no_grad():
        model.eval()  # validation, encoding: untouched even inside the context
        evaluated = model.encode_image(images)
        with mixer.mixing(torch.Generator().manual_seed(0)):
            assert torch.allclose(model.encode_image(images), evaluated)
        model.train()  # training mode (BatchNorm on batch statistics: outputs do not depend on running ones)
        plain = model.encode_image(images)
        with mixer.mixing(torch.Generator().manual_seed(0)):
            mixed = model.encode_image(images)
        after = model.encode_image(images)
    assert not torch.allclose(plain, mixed) and torch.allclose(after, plain)
    mixer.remove()
    assert all(not layer._forward_hooks for layer in style_layers(model))


def test_a_tower_without_resnet_stages_is_a_one_line_error():
    torch.manual_seed(0)
    vit = create_model("TR-Tiny-ViT")
    with pytest.raises(TrafficRetrievalError, match="feature_style_mix needs a ResNet image tower") as refused:
        FeatureStyleMix(vit.model, 0.5)
    assert "\n" not in str(refused.value)


def test_a_step_with_feature_style_mixing_trains_and_differs(tiny):
    state, parts = fresh_run(tiny)
    parts = dataclasses.replace(parts, feature_style=FeatureStyleMix(state.model, 1.0))
    before = weights(state.model)
    loss = train_step(state, parts, [torch.arange(16)], torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in weights(state.model).items())
    state_plain, parts_plain = fresh_run(tiny)
    assert train_step(state_plain, parts_plain, [torch.arange(16)], torch.Generator().manual_seed(0)) != pytest.approx(loss)
