"""The camera-look augmentation level, its schedule and the clean/augmented consistency
loss (issue #14): pure tensor functions, and one training step with each."""

import dataclasses
import math

import pytest
import torch

from traffic_retrieval.train.augment import (AUGMENT_LEVELS, DEGRADATIONS, AugmentConfig, augment_batch, augment_strength, gaussian_blur,
                                             jpeg_round_trip, low_light, motion_blur, occlude_border, scheduled)
from traffic_retrieval.train.loop import consistency_loss, train_epoch, train_step

from test_trainer_parts import fresh_run, tiny, weights  # noqa: F401  (tiny: the module fixture)


def striped(n=6, size=32):
    """uint8 NCHW images with sharp vertical stripes of a different colour each."""
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        images[i, i % 3, :, ::4] = 255
        images[i, :, :, 1::4] = (40 * i) % 256
    return images


def test_the_surveillance_level_is_the_original_set_and_draws_the_same_stream():
    assert AUGMENT_LEVELS["surveillance"] == AugmentConfig()
    images = striped()
    old, new = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = augment_batch(images, AugmentConfig(), old)
    # a config whose camera-only probabilities are 0 draws nothing more: runs of the mild set reproduce
    again = augment_batch(images, dataclasses.replace(AugmentConfig(), gamma=0.0, desaturate=0.0, occlude=0.0, jpeg=0.0), new)
    assert torch.equal(first, again) and torch.equal(old.get_state(), new.get_state())


def test_the_camera_level_degrades_deterministically_within_range():
    images = striped(16)
    out = augment_batch(images, AUGMENT_LEVELS["camera"], torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, augment_batch(images, AUGMENT_LEVELS["camera"], torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(images, AUGMENT_LEVELS["camera"], torch.Generator().manual_seed(1)))
    # stronger than the mild set: further from the clean pixels on average over many draws
    clean = images.float() / 255
    distance = lambda level: sum(float((augment_batch(images, AUGMENT_LEVELS[level], torch.Generator().manual_seed(s)) - clean).abs().mean())
                                 for s in range(8))
    assert distance("camera") > distance("surveillance")


def test_the_wide_level_is_the_camera_level_plus_motion_and_night_drawn_per_image():
    camera, wide = AUGMENT_LEVELS["camera"], AUGMENT_LEVELS["camera-wide"]
    assert (camera.motion_blur, camera.low_light, camera.per_image) == (0.0, 0.0, False)  # the camera level draws the stream it always drew
    assert dataclasses.replace(wide, motion_blur=0.0, low_light=0.0, per_image=False) == camera
    images = striped(16)
    out = augment_batch(images, wide, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, augment_batch(images, wide, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(images, camera, torch.Generator().manual_seed(0)))
    # per image: the chosen images are shifted by different amounts (one batch-wide shift moves them alike)
    shift_only = AugmentConfig(flip=0, low_resolution=0, blur=0, exposure=0, color_cast=0, noise=0, translate=1.0, per_image=True)
    same = striped(8).clone()
    same[:] = same[0]
    shifted = augment_batch(same, shift_only, torch.Generator().manual_seed(1))
    assert len({tuple(image.flatten()[:200].tolist()) for image in shifted}) > 1


def test_motion_blur_keeps_flat_images_and_smears_along_its_direction():
    flat = torch.full((2, 3, 24, 24), 0.4)
    assert torch.allclose(motion_blur(flat, torch.tensor([6.0, 3.0]), torch.tensor([0.0, 1.0])), flat, atol=1e-5)
    images = striped(2, size=24).float() / 255  # vertical stripes
    horizontal = motion_blur(images, torch.tensor([8.0, 8.0]), torch.tensor([0.0, 0.0]))
    vertical = motion_blur(images, torch.tensor([8.0, 8.0]), torch.tensor([math.pi / 2, math.pi / 2]))
    assert horizontal.std(dim=-1).mean() < 0.5 * images.std(dim=-1).mean()  # smeared across the stripes
    assert torch.allclose(vertical[..., 4:-4, :], images[..., 4:-4, :], atol=1e-4)  # along them: unchanged away from the border


def test_low_light_darkens_tints_and_touches_only_the_chosen_images():
    images = torch.full((4, 3, 16, 16), 0.6)
    chosen = torch.tensor([True, False, True, False])
    out = low_light(images, chosen, torch.Generator().manual_seed(0))
    assert torch.equal(out[~chosen], images[~chosen]) and 0 <= out.min() and out.max() <= 1
    assert (out[chosen].mean(dim=(1, 2, 3)) < 0.6).all()  # the gain brings it back only part of the way
    assert (out[chosen].std(dim=(2, 3)) > 0.001).all()  # amplified sensor noise
    assert torch.equal(out, low_light(images, chosen, torch.Generator().manual_seed(0)))
    assert torch.equal(low_light(images, torch.zeros(4, dtype=torch.bool), torch.Generator().manual_seed(0)), images)


def test_schedules_scale_every_degradation_but_not_the_flip():
    camera = AUGMENT_LEVELS["camera"]
    assert scheduled(camera, 1.0) is camera
    off = scheduled(camera, 0.0)
    assert off.flip == camera.flip and all(getattr(off, name) == 0 for name in DEGRADATIONS)
    half = scheduled(camera, 0.5)
    assert half.jpeg == pytest.approx(camera.jpeg / 2) and half.max_noise == camera.max_noise  # magnitudes stay, probabilities scale
    assert [augment_strength("ramp", epoch, 4) for epoch in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert augment_strength("constant", 0, 4) == 1.0 and augment_strength("ramp", 9, 4) == 1.0
    with pytest.raises(ValueError, match="constant, ramp"):
        augment_strength("cosine", 0, 4)


def test_gaussian_blur_keeps_flat_images_and_smooths_edges_by_sigma():
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.5])), flat, atol=1e-6)
    edges = striped(2).float() / 255
    blurred = gaussian_blur(edges, torch.tensor([0.3, 1.5]))
    assert torch.allclose(blurred.mean(dim=(2, 3)), edges.mean(dim=(2, 3)), atol=0.02)  # the mean level stays (replicate padding)
    variation = lambda x: float((x[..., 1:] - x[..., :-1]).abs().mean())
    assert variation(blurred[1]) < variation(blurred[0]) < variation(edges[0])


def test_jpeg_and_occluders_touch_only_the_chosen_images():
    images = striped(4).float() / 255
    chosen = torch.tensor([True, False, True, False])
    compressed = jpeg_round_trip(images, chosen, (10, 10), torch.Generator().manual_seed(0))
    assert torch.equal(compressed[~chosen], images[~chosen]) and not torch.equal(compressed[chosen], images[chosen])
    assert 0 <= compressed.min() and compressed.max() <= 1
    occluded = occlude_border(images, chosen, torch.Generator().manual_seed(0))
    assert torch.equal(occluded[~chosen], images[~chosen])
    for index in (0, 2):
        changed = (occluded[index] != images[index]).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        touches_border = rows.min() == 0 or rows.max() == 31 or cols.min() == 0 or cols.max() == 31
        assert changed.any() and touches_border
        box = occluded[index][:, changed]
        assert torch.allclose(box, box[:, :1].expand_as(box))  # one flat grey level


def test_consistency_loss_is_zero_for_the_same_view_and_trains_only_the_augmented_one():
    clean = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert float(consistency_loss(clean, clean)) == pytest.approx(0, abs=1e-6)
    augmented = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    target = clean.clone().requires_grad_()
    loss = consistency_loss(augmented, target)
    loss.backward()
    assert 0 < float(loss.detach()) <= 2 and augmented.grad is not None and target.grad is None


def test_a_step_with_the_camera_level_and_consistency_trains(tiny):

    state, parts = fresh_run(tiny, augment=AUGMENT_LEVELS["camera"])
    parts = dataclasses.replace(parts, consistency=0.5)
    before = weights(state.model)
    loss = train_step(state, parts, [torch.arange(16)], torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and any(not torch.equal(before[k], v) for k, v in weights(state.model).items())
    # the consistency term is part of the loss: the same step without it gives another value
    state_plain, parts_plain = fresh_run(tiny, augment=AUGMENT_LEVELS["camera"])
    assert train_step(state_plain, parts_plain, [torch.arange(16)], torch.Generator().manual_seed(0)) != pytest.approx(loss)


def test_the_ramp_schedule_augments_early_epochs_less(tiny, monkeypatch):
    """train_epoch hands each epoch's steps the config scaled by its strength."""
    import traffic_retrieval.train.loop as loop
    from traffic_retrieval.train.schedule import plan_schedule

    seen = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda state, parts, batches, generator: seen.append(parts.augment.jpeg) or real(state, parts, batches, generator))
    state, parts = fresh_run(tiny, augment=AUGMENT_LEVELS["camera"])
    parts = dataclasses.replace(parts, augment_schedule="ramp")
    schedule = plan_schedule(16, 16, 1, 2, 1e-4, 0)
    for epoch in range(2):
        train_epoch(state, parts, schedule, epoch, seed=0)
    assert seen == [pytest.approx(AUGMENT_LEVELS["camera"].jpeg / 2), pytest.approx(AUGMENT_LEVELS["camera"].jpeg)]
