"""The one image loader and the one preprocessing path (pad / squash / crop to a
square, resize, normalise) used by training, augmentation, prediction and indexing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TrafficRetrievalError

RESIZE_MODES = ("pad", "squash", "crop")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreprocessConfig:
    image_size: int = 224
    resize_mode: str = "pad"  # pad: zero-pad to a square (the seed's method); squash; crop (center)
    mean: tuple[float, float, float] = field(default=OPENAI_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_STD)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise TrafficRetrievalError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def to_dict(self) -> dict:
        return asdict(self) | {"mean": list(self.mean), "std": list(self.std)}


def load_image(path: str | Path):
    """Open an image as RGB, honouring EXIF orientation; one-line error on failure.

    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` are refused, not decoded: PIL
    itself only warns below twice the limit, after which decoding would take
    gigabytes (a decompression bomb).
    """
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda value: value * (1 / 256)).convert("L")
            return image.convert("RGB")
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: image not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TrafficRetrievalError(f"{path}: image is too large (over {Image.MAX_IMAGE_PIXELS} pixels; decompression bomb protection)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise TrafficRetrievalError(f"{path}: cannot read image ({exc})") from None


def to_square(image, image_size: int, resize_mode: str):
    """Resize a PIL image to ``image_size`` x ``image_size`` by padding, squashing or cropping."""
    from PIL import Image

    width, height = image.size
    if resize_mode == "squash":
        return image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    if resize_mode == "crop":
        scale = image_size / min(width, height)
        resized = image.resize((max(image_size, round(width * scale)), max(image_size, round(height * scale))), Image.Resampling.BICUBIC)
        left, top = (resized.width - image_size) // 2, (resized.height - image_size) // 2
        return resized.crop((left, top, left + image_size, top + image_size))
    # pad: scale the longer side to image_size, centre on a black square (= zero-pad, then resize)
    scale = image_size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    canvas.paste(resized, ((image_size - new_size[0]) // 2, (image_size - new_size[1]) // 2))
    return canvas


def image_to_uint8_tensor(path: str | Path, config: PreprocessConfig):
    """Load, square and resize one image into a CHW uint8 tensor (cacheable form)."""
    import numpy as np
    import torch

    square = to_square(load_image(path), config.image_size, config.resize_mode)
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize_uint8_batch(batch, config: PreprocessConfig):
    """uint8 NCHW -> float NCHW normalised with the model's mean and std."""
    import torch

    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std


class ImageFileDataset:
    """A torch-style dataset of uint8 CHW tensors for a list of image paths.

    Used with a DataLoader so workers decode and resize in parallel. An image that
    cannot be read yields ``None`` for the tensor and its error message, so the
    caller counts and reports it instead of crashing mid-run.
    """

    def __init__(self, paths: list[str], config: PreprocessConfig):
        self.paths = [str(p) for p in paths]
        self.config = config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, image_to_uint8_tensor(self.paths[index], self.config), None
        except TrafficRetrievalError as exc:
            return index, None, str(exc)


def collate_images(items):
    import torch

    indices = [index for index, tensor, _ in items if tensor is not None]
    tensors = [tensor for _, tensor, _ in items if tensor is not None]
    errors = [(index, error) for index, tensor, error in items if tensor is None]
    batch = torch.stack(tensors) if tensors else None
    return indices, batch, errors
