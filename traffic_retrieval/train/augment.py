"""Batch augmentations on cached uint8 images, run as tensor ops (cheap on CPU).

Training images come from the web, the gallery from surveillance cameras. These
augmentations teach invariance to what such cameras do to a picture - low
resolution, blur, exposure, a mild color cast, sensor noise - without ever
looking at the test images. Hue is never rotated: colors are labels here.

Two levels (``AUGMENT_LEVELS``, ``train --augment-level``): ``surveillance``, the mild
original set, and ``camera``, the set a real surveillance camera calls for: stronger
resolution loss, a Gaussian blur of random width, JPEG block artefacts, gamma (dusk and
over-exposure), partial desaturation, stronger sensor noise and colour casts, and
occluders (a bar or a box at the border, as a timestamp or a passing object leaves).
``scheduled`` scales every degradation's probability by a strength in [0, 1], so a run
can ramp the augmentation up toward its end (``--augment-schedule ramp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    low_resolution: float = 0.5  # probability of a down-then-up resize
    min_scale: float = 0.35
    blur: float = 0.3
    max_blur_sigma: float = 0.0  # 0: a fixed 3x3 binomial kernel; else a Gaussian of sigma uniform in [0.3, max] per image
    exposure: float = 0.8  # brightness/contrast jitter
    color_cast: float = 0.5  # per-channel gain up to +-max_cast
    max_cast: float = 0.08
    noise: float = 0.3
    max_noise: float = 0.06
    translate: float = 0.5  # probability of a shift up to 1/16 of the side
    gamma: float = 0.0  # probability of a gamma curve with exponent in [1/max_gamma, max_gamma]
    max_gamma: float = 1.8
    desaturate: float = 0.0  # probability of pulling colours toward grey by up to max_desaturation
    max_desaturation: float = 0.5
    occlude: float = 0.0  # probability of a flat box (up to a fifth of the side) at the border
    jpeg: float = 0.0  # probability of a JPEG round trip at a quality in jpeg_quality
    jpeg_quality: tuple[int, int] = (15, 60)
    per_image: bool = False  # resolution loss and shift drawn per image (False: one scale and one shift per batch, as the first levels did)
    motion_blur: float = 0.0  # probability of a linear motion blur, up to max_motion of the side long, in a random direction
    max_motion: float = 0.06  # of the side: a car at 15 m/s moves about 7% of its length in a 1/50 s exposure
    low_light: float = 0.0  # probability of a night exposure: the scene darkened, lit by a lamp's colour, the camera's gain amplifying sensor noise
    max_lamp_tint: float = 0.25  # how far toward a lamp's colour a night exposure goes (0: white light; 1: the lamp's full colour)
    night: float = 0.0  # probability of a night frame as automatic exposure delivers it: 2-5 stops under, sensor noise, 8 bits, lifted (night_frame)


DEGRADATIONS = ("low_resolution", "blur", "exposure", "color_cast", "noise", "translate", "gamma", "desaturate", "occlude", "jpeg", "motion_blur", "low_light",
                "night")

AUGMENT_LEVELS = {
    "surveillance": AugmentConfig(),
    "camera": AugmentConfig(low_resolution=0.6, min_scale=0.25, blur=0.5, max_blur_sigma=1.5, exposure=0.8, color_cast=0.6, max_cast=0.12,
                            noise=0.5, max_noise=0.08, gamma=0.4, desaturate=0.3, occlude=0.25, jpeg=0.6),
}
AUGMENT_LEVELS["camera-wide"] = replace(AUGMENT_LEVELS["camera"], per_image=True, motion_blur=0.3, low_light=0.25)
AUGMENT_LEVELS["camera-night"] = replace(AUGMENT_LEVELS["camera"], night=0.25)
NIGHT_STOPS_UNDER = (2.0, 5.0)  # a lit street at night, under a day exposure
NIGHT_GAIN_STOPS = (0.0, 2.0)  # what the camera's own gain gives back before the frame is quantised
NIGHT_SHOT_NOISE = (0.0003, 0.004)  # photon noise variance per unit of linear signal
NIGHT_READ_NOISE = (0.0005, 0.005)  # read noise std, linear units
LAMP_COLOURS = ((1.0, 0.72, 0.42), (1.0, 0.9, 0.75), (0.8, 0.9, 1.0), (0.85, 1.0, 0.85))  # sodium, warm white LED, cold white LED, mercury vapour (RGB gains)
AUGMENT_SCHEDULES = ("constant", "ramp")


def augment_strength(schedule: str, epoch: int, epochs: int) -> float:
    """How strongly epoch ``epoch`` (0-based) of ``epochs`` augments: ``constant``: 1;
    ``ramp``: linearly from 1/epochs in the first epoch to 1 in the last, so the model
    first learns the attributes on clean images and meets the hardest camera
    degradations toward the end."""
    if schedule == "constant":
        return 1.0
    if schedule == "ramp":
        return min(1.0, (epoch + 1) / max(1, epochs))
    raise ValueError(f"augment schedule must be one of {', '.join(AUGMENT_SCHEDULES)}, got {schedule!r}")


def scheduled(config: AugmentConfig, strength: float) -> AugmentConfig:
    """``config`` with every degradation's probability scaled by ``strength`` (the flip stays)."""
    if strength >= 1.0:
        return config
    return replace(config, **{name: getattr(config, name) * max(0.0, strength) for name in DEGRADATIONS})


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
        for group in _groups(shift, config.per_image):
            dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
            images[group] = torch.roll(images[group], shifts=(dy, dx), dims=(-2, -1))

    low = chosen(config.low_resolution)
    if low.any():
        if config.per_image:  # a size per image; images that drew the same size are resized together
            indices = torch.nonzero(low).flatten()
            sizes = [max(8, int(height * float(scale))) for scale in uniform(config.min_scale, 1.0, len(indices))]
            groups = {}
            for index, small in zip(indices.tolist(), sizes):
                groups.setdefault(small, []).append(index)
            resized = sorted(groups.items())
        else:
            resized = [(max(8, int(height * float(uniform(config.min_scale, 1.0, 1)))), low)]
        for small, group in resized:
            subset = F.interpolate(images[group], size=(small, small), mode="bilinear", align_corners=False, antialias=True)
            images[group] = F.interpolate(subset, size=(height, width), mode="bilinear", align_corners=False)

    if config.motion_blur > 0:
        moving = chosen(config.motion_blur)
        if moving.any():
            count = int(moving.sum())
            lengths = uniform(2.0, max(2.0, config.max_motion * height), count)
            images[moving] = motion_blur(images[moving], lengths, uniform(0.0, math.pi, count))

    blur = chosen(config.blur)
    if blur.any():
        if config.max_blur_sigma > 0:
            images[blur] = gaussian_blur(images[blur], uniform(0.3, max(0.3, config.max_blur_sigma), int(blur.sum())))
        else:
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

    if config.gamma > 0:
        curve = chosen(config.gamma).float().view(n, 1, 1, 1)
        exponent = torch.exp(curve * uniform(-1, 1, n, 1, 1, 1) * math.log(max(1.0, config.max_gamma)))
        images = images.clamp(0, 1) ** exponent

    if config.desaturate > 0:
        pull = chosen(config.desaturate).float().view(n, 1, 1, 1) * uniform(0, config.max_desaturation, n, 1, 1, 1)
        gray = images.mean(dim=1, keepdim=True)
        images = images + pull * (gray - images)

    noise = chosen(config.noise).float().view(n, 1, 1, 1)
    images = images + noise * uniform(0, config.max_noise, n, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    images = images.clamp_(0, 1)

    if config.low_light > 0:
        images = low_light(images, chosen(config.low_light), generator, config.max_lamp_tint)
    if config.night > 0:
        images = night_frame(images, chosen(config.night), generator)

    if config.occlude > 0:
        images = occlude_border(images, chosen(config.occlude), generator)
    if config.jpeg > 0:
        images = jpeg_round_trip(images, chosen(config.jpeg), config.jpeg_quality, generator)
    return images


def _groups(chosen, per_image: bool):
    """The index sets one draw applies to: every chosen image alone (``per_image``), else all chosen images together."""
    import torch

    if not per_image:
        return [chosen]
    return [[index] for index in torch.nonzero(chosen).flatten().tolist()]


def motion_blur(images, lengths, angles):
    """Each float NCHW image smeared along a line of ``lengths[i]`` pixels at ``angles[i]``
    radians (a moving object, or a shaking camera, during the exposure): the mean of the
    image sampled at evenly spaced points of that line (bilinear, border replicated)."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = images.shape
    steps = max(2, int(math.ceil(float(lengths.max()))) + 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    base = torch.stack([xs, ys], dim=-1).expand(n, height, width, 2)
    direction = torch.stack([torch.cos(angles) * 2 / max(1, width - 1), torch.sin(angles) * 2 / max(1, height - 1)], dim=-1)  # one pixel, in grid units
    total = torch.zeros_like(images)
    for t in torch.linspace(-0.5, 0.5, steps).tolist():
        offset = (direction * (lengths * t).view(n, 1)).view(n, 1, 1, 2)
        total += F.grid_sample(images, base + offset, mode="bilinear", padding_mode="border", align_corners=True)
    return total / steps


def low_light(images, chosen, generator, max_tint: float = 0.25):
    """A night exposure of the chosen float NCHW images: the scene darkened to 15-50% of its
    light, tinted toward a street lamp's colour (``LAMP_COLOURS``, by half to all of
    ``max_tint``: colours are labels, and a sodium lamp at full strength turns a white car
    orange; 0.25 keeps a cast like a mis-set white balance), sensor
    noise added in the dark (sigma 0.005-0.02), then the camera's automatic gain brightening it
    back part of the way (so the noise is amplified with it)."""
    import torch

    count = int(chosen.sum())
    if count == 0:
        return images
    out = images.clone()
    picked = images[chosen]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    light = uniform(0.15, 0.5, count, 1, 1, 1)
    lamps = torch.tensor(LAMP_COLOURS)[torch.randint(0, len(LAMP_COLOURS), (count,), generator=generator)].view(count, 3, 1, 1)
    strength = max_tint * uniform(0.5, 1.0, count, 1, 1, 1)
    tint = 1 + strength * (lamps - 1)
    dark = picked * light * tint + uniform(0.005, 0.02, count, 1, 1, 1) * torch.randn(picked.shape, generator=generator)
    gain = light ** -uniform(0.5, 1.0, count, 1, 1, 1)  # automatic gain: back to between sqrt(light) and full brightness
    out[chosen] = (dark * gain).clamp_(0, 1)
    return out


def night_frame(images, chosen, generator):
    """The chosen float NCHW images as a street camera delivers them at night and
    ``image_tta: exposure`` (``data.exposure.auto_exposure``) then lifts them: in linear
    light, the scene 2-5 stops under (one factor for all channels: no lamp tint, colours are
    labels), photon and read noise of the sensor, the camera's gain giving back 0-2 stops,
    8-bit quantisation (the shadows' few levels), then brightened to middle grey. What the
    model learns from it is what is left of a night frame after the lift: amplified noise,
    banding and crushed shadows, at a day frame's brightness."""
    import torch

    from ..data.exposure import auto_exposure, linear_to_srgb, srgb_code_to_linear, srgb_to_linear

    count = int(chosen.sum())
    if count == 0:
        return images

    def uniform(bounds, *shape):
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=generator)

    out = images.clone()
    signal = srgb_to_linear(images[chosen]) * 2.0 ** -uniform(NIGHT_STOPS_UNDER, count, 1, 1, 1)
    sigma = (uniform(NIGHT_SHOT_NOISE, count, 1, 1, 1) * signal + uniform(NIGHT_READ_NOISE, count, 1, 1, 1) ** 2).sqrt()
    noisy = signal + sigma * torch.randn(signal.shape, generator=generator)
    codes = (linear_to_srgb(noisy * 2.0 ** uniform(NIGHT_GAIN_STOPS, count, 1, 1, 1)) * 255).round_().long()
    out[chosen] = auto_exposure(codes.float() / 255, linear=srgb_code_to_linear(codes))
    return out


def gaussian_blur(images, sigmas):
    """Each float NCHW image blurred by a separable Gaussian of its own ``sigmas[i]``
    (kernel radius ceil(2 sigma), replicate padding)."""
    import torch
    import torch.nn.functional as F

    n, channels = images.shape[:2]
    radius = max(1, int(math.ceil(2 * float(sigmas.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigmas.view(-1, 1)) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # [n, 2r+1]
    # one group per (image, channel): a single grouped conv per direction
    flat = images.reshape(1, n * channels, *images.shape[2:])
    weight = kernels.repeat_interleave(channels, dim=0)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), weight.view(n * channels, 1, 1, -1), groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), weight.view(n * channels, 1, -1, 1), groups=n * channels)
    return flat.view_as(images)


def occlude_border(images, chosen, generator):
    """A flat box of a random grey level over a chosen image's border: a bar across the
    top or bottom (a timestamp, a car roof) or a box at a side (a passer-by), up to a
    fifth of the side deep."""
    import torch

    _, _, height, width = images.shape
    out = images.clone()
    for index in torch.nonzero(chosen).flatten().tolist():
        side = int(torch.randint(0, 4, (), generator=generator))
        depth = 1 + int(torch.randint(0, max(1, min(height, width) // 5), (), generator=generator))
        level = float(torch.rand((), generator=generator))
        if side == 0:
            out[index, :, :depth, :] = level
        elif side == 1:
            out[index, :, height - depth :, :] = level
        elif side == 2:
            out[index, :, :, :depth] = level
        else:
            out[index, :, :, width - depth :] = level
    return out


def jpeg_round_trip(images, chosen, quality_range: tuple[int, int], generator):
    """Chosen float NCHW images encoded as JPEG at a quality drawn in ``quality_range`` and
    decoded again (Pillow's libjpeg, 4:2:0 chroma subsampling): the 8x8 block artefacts and
    chroma loss of a camera's video encoder."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    out = images.clone()
    low, high = int(quality_range[0]), int(quality_range[1])
    for index in torch.nonzero(chosen).flatten().tolist():
        quality = int(torch.randint(low, high + 1, (), generator=generator))
        pixels = (images[index] * 255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32)
        out[index] = torch.from_numpy(decoded).permute(2, 0, 1) / 255
    return out


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
