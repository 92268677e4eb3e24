"""Batch augmentations on cached uint8 images, run as tensor ops (cheap on CPU).

Training images come from the web, the gallery from surveillance cameras. These
augmentations teach invariance to what such cameras do to a picture - low
resolution, blur, exposure, a mild color cast, sensor noise - without ever
looking at the test images. Hue is never rotated: colors are labels here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    low_resolution: float = 0.5  # probability of a down-then-up resize
    min_scale: float = 0.35
    blur: float = 0.3
    exposure: float = 0.8  # brightness/contrast jitter
    color_cast: float = 0.5  # per-channel gain up to +-max_cast
    max_cast: float = 0.08
    noise: float = 0.3
    max_noise: float = 0.06
    translate: float = 0.5  # probability of a shift up to 1/16 of the side


def augment_batch(images_uint8, config: AugmentConfig, generator):
    """uint8 NCHW -> float NCHW in [0, 1], augmented per sample."""
    import torch
    import torch.nn.functional as F

    images = images_uint8.float() / 255.0
    n, _, height, width = images.shape

    def chosen(probability):
        return torch.rand(n, generator=generator) < probability

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    flip = chosen(config.flip)
    if flip.any():
        images[flip] = images[flip].flip(-1)

    shift = chosen(config.translate)
    if shift.any():
        max_shift = max(1, height // 16)
        dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
        images[shift] = torch.roll(images[shift], shifts=(dy, dx), dims=(-2, -1))

    low = chosen(config.low_resolution)
    if low.any():
        scale = float(uniform(config.min_scale, 1.0, 1))
        small = max(8, int(height * scale))
        subset = F.interpolate(images[low], size=(small, small), mode="bilinear", align_corners=False, antialias=True)
        images[low] = F.interpolate(subset, size=(height, width), mode="bilinear", align_corners=False)

    blur = chosen(config.blur)
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel2d = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        images[blur] = F.conv2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"), kernel2d, groups=3)

    exposure = chosen(config.exposure).float().view(n, 1, 1, 1)
    brightness = 1 + exposure * uniform(-0.3, 0.3, n, 1, 1, 1)
    contrast = 1 + exposure * uniform(-0.3, 0.3, n, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean * brightness

    cast = chosen(config.color_cast).float().view(n, 1, 1, 1)
    images = images * (1 + cast * uniform(-config.max_cast, config.max_cast, n, 3, 1, 1))

    noise = chosen(config.noise).float().view(n, 1, 1, 1)
    images = images + noise * uniform(0, config.max_noise, n, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return images.clamp_(0, 1)


SEED_CROP_SCALE = (0.9, 1.0)  # open_clip's RandomResizedCrop in the seed's training transform
SEED_CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(images, generator, scale: tuple[float, float] = SEED_CROP_SCALE, ratio: tuple[float, float] = SEED_CROP_RATIO, attempts: int = 10):
    """torchvision's RandomResizedCrop, per sample, on a float NCHW batch of squared images
    (after padding, as the seed's open_clip training transform): a crop of ``scale`` of the
    area with an aspect ratio (log-uniform) in ``ratio``, resized back to the input size.
    After ``attempts`` crops that do not fit, the whole image is kept (torchvision's
    fallback, for these ratios). Draws from ``generator`` only: deterministic given a seed."""
    import math

    import torch
    import torch.nn.functional as F

    n, _, height, width = images.shape
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    out = torch.empty_like(images)
    for index in range(n):
        box = (0, 0, height, width)
        for _ in range(attempts):
            area = height * width * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator)))
            aspect = math.exp(log_low + (log_high - log_low) * float(torch.rand((), generator=generator)))
            crop_width, crop_height = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
                box = (top, left, crop_height, crop_width)
                break
        top, left, crop_height, crop_width = box
        crop = images[index : index + 1, :, top : top + crop_height, left : left + crop_width]
        out[index] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0] if (crop_height, crop_width) != (height, width) else crop[0]
    return out


def mix_style(images, generator, probability: float, alpha: float = 0.1):
    """MixStyle (Zhou et al., ICLR 2021) at the input: for a ``probability`` share of a float
    NCHW batch in [0, 1], each image's per-channel mean and standard deviation (its "style":
    exposure, white balance, contrast) are replaced by a mix with another image's of the batch,
    ``lam * own + (1 - lam) * other``, ``lam ~ Beta(alpha, alpha)``; the content stays. Draws
    from ``generator`` only (torch's Beta sampler takes no generator: ``_beta_samples``), so a
    run is deterministic given its seed, on every rank alike."""
    import torch

    count = len(images)
    if probability <= 0 or count < 2:
        return images
    chosen = torch.rand(count, generator=generator) < probability
    if not chosen.any():
        return images
    partners = torch.randperm(count, generator=generator)
    lam = _beta_samples(alpha, count, generator).view(count, 1, 1, 1)
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True).clamp_min(1e-4)
    mixed = (images - mean) / std * (lam * std + (1 - lam) * std[partners]) + lam * mean + (1 - lam) * mean[partners]
    out = images.clone()
    out[chosen] = mixed[chosen].clamp_(0, 1)
    return out


def _beta_samples(alpha: float, count: int, generator, grid: int = 4096):
    """``count`` draws of Beta(alpha, alpha) from ``generator`` by inverting its CDF tabulated on a grid."""
    import torch

    x = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    density = (x * (1 - x)) ** (alpha - 1)
    cdf = torch.cumsum(density, 0)
    cdf = cdf / cdf[-1]
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return x[torch.searchsorted(cdf, u).clamp_(max=grid - 1)].float()
