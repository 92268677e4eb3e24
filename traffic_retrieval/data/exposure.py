"""Automatic exposure: an under-exposed frame brightened to middle grey, in linear light.

A street camera at night delivers frames two to five stops darker than the day-lit web
images a model is trained on; every camera's own automatic exposure would have metered
them to middle grey (18% reflectance) had it had the gain. ``auto_exposure`` does it after
the fact, as the camera's exposure loop does: each image's mean luminance is measured in
linear light (sRGB decoded), and an image under middle grey is multiplied by the gain that
brings it there (at most ``MAX_GAIN``, 3 stops, so noise is not amplified without bound),
then encoded back to sRGB. A gain in linear light scales the three channels alike, so hues
and saturation (colours are labels here) are kept; what clips at white is what a camera
would clip. Frames at or above middle grey are returned unchanged, so a day gallery (whose
images average 0.2-0.3 in linear light) is left almost as it is.
"""

from __future__ import annotations

import functools

MIDDLE_GREY = 0.18  # the linear luminance an exposure meter aims at
MAX_GAIN = 8.0  # 3 stops: a camera's analogue gain range at night, and the noise it is willing to amplify
LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance weights of linear RGB


def srgb_to_linear(values):
    import torch

    return torch.where(values <= 0.04045, values / 12.92, ((values.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values):
    import torch

    values = values.clamp(0.0, 1.0)
    return torch.where(values <= 0.0031308, values * 12.92, 1.055 * values.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def exposure_gains(images, target: float = MIDDLE_GREY, max_gain: float = MAX_GAIN, linear=None, content=None):
    """The gain (>= 1, <= ``max_gain``) that brings each float NCHW sRGB image in [0, 1] to
    ``target`` (``linear``: the images already in linear light, to save decoding them again;
    ``content``: an N1HW boolean mask of the pixels to meter, e.g. not the bars a padded image
    was centred on; None: all)."""
    import torch

    linear = srgb_to_linear(images.float()) if linear is None else linear
    luma = torch.tensor(LUMA, dtype=linear.dtype).view(1, 3, 1, 1)
    luminance = (linear * luma).sum(dim=1, keepdim=True)
    if content is None:
        mean = luminance.mean(dim=(1, 2, 3))
    else:
        mean = (luminance * content).sum(dim=(1, 2, 3)) / content.sum(dim=(1, 2, 3)).clamp(min=1)
        mean = torch.where(content.flatten(1).any(dim=1), mean, torch.full_like(mean, target))  # nothing to meter: left alone
    return (target / mean.clamp(min=target / max_gain)).clamp(1.0, max_gain)


def auto_exposure(images, target: float = MIDDLE_GREY, max_gain: float = MAX_GAIN, linear=None, content=None):
    """Float NCHW sRGB images in [0, 1], each under-exposed one brightened to ``target`` in
    linear light (``exposure_gains``; ``linear``: the images in linear light, if known;
    ``content``: the N1HW mask of the pixels that are the picture, metered and lifted, the others
    kept, e.g. a padded image's bars); the others are the same tensor values."""
    linear = srgb_to_linear(images.float()) if linear is None else linear
    gains = exposure_gains(images, target, max_gain, linear, content)
    darker = gains > 1.0
    if not bool(darker.any()):
        return images
    out = images.float().clone()
    lifted = linear_to_srgb(linear[darker] * gains[darker].view(-1, 1, 1, 1)).to(out.dtype)
    out[darker] = lifted if content is None else lifted.where(content[darker], out[darker])
    return out


@functools.lru_cache(maxsize=1)
def _linear_of_srgb_codes():
    """The 256 8-bit sRGB codes in linear light."""
    import torch

    return srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255)


def srgb_code_to_linear(codes):
    """Linear light of integer 8-bit sRGB codes (a table lookup, exact as ``srgb_to_linear(codes / 255)``)."""
    return _linear_of_srgb_codes()[codes]
