"""The one image loader and the one preprocessing path (pad / squash / crop to a
square, resize, normalise) used by training, augmentation, prediction and indexing.

The preprocessing speaks open_clip's vocabulary (``open_clip.transform.PreprocessCfg``:
``size``, ``resize_mode`` longest / squash / shortest, ``fill_color``, ``mean``, ``std``,
``interpolation``) and gives the pixels of open_clip's inference transform
(``image_transform_v2(cfg, is_train=False)``), but as uint8, so they can be cached and
decoded in DataLoader workers. Our first names stay accepted: ``pad`` is ``longest``
(with a black fill), ``crop`` is ``shortest``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrafficRetrievalError, printable
from ..options import ResizeMode

RESIZE_MODES = typing.get_args(ResizeMode)  # what a user may write: open_clip's names and the aliases
RESIZE_MODE_ALIASES = {"pad": "longest", "crop": "shortest"}  # our first names -> open_clip's
INTERPOLATIONS = ("bicubic", "bilinear")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def open_clip_resize_mode(resize_mode: str) -> str:
    """open_clip's name for a resize mode given in either vocabulary (``pad`` -> ``longest``)."""
    if resize_mode not in RESIZE_MODES:
        raise TrafficRetrievalError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    return RESIZE_MODE_ALIASES.get(resize_mode, resize_mode)


@dataclass
class PreprocessConfig:
    """How an image becomes the model's input, in the keys of open_clip's ``PreprocessCfg``.

    ``resize_mode`` takes either vocabulary, when built and when assigned, and always
    holds open_clip's name, so what is stored or handed to open_clip is open_clip's.
    """

    size: int = 224  # side of the square input
    resize_mode: str = "longest"  # longest (= pad, the seed's), squash or shortest (= crop)
    mean: tuple[float, float, float] = field(default=OPENAI_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_STD)
    fill_color: int = 0  # grey level of the bars around a longest (pad) image
    interpolation: str = "bicubic"

    def __setattr__(self, name, value):
        if name == "resize_mode":
            value = open_clip_resize_mode(value)
        super().__setattr__(name, value)

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise TrafficRetrievalError(f"size must be a positive integer, got {self.size!r}")
        if isinstance(self.fill_color, bool) or not isinstance(self.fill_color, int) or not 0 <= self.fill_color <= 255:
            raise TrafficRetrievalError(f"fill_color must be an integer from 0 to 255, got {self.fill_color!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise TrafficRetrievalError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)

    def to_open_clip_preprocess_cfg(self) -> dict:
        """The dict open_clip keeps as a model's ``preprocess_cfg`` (``PreprocessCfg(**cfg)``, ``merge_preprocess_dict``)."""
        return {
            "size": self.size,
            "mode": "RGB",
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill_color,
        }

    @classmethod
    def from_open_clip_preprocess_cfg(cls, cfg: dict) -> PreprocessConfig:
        """The config an open_clip ``preprocess_cfg`` dict describes.

        As in open_clip, unknown keys are ignored and missing ones take ``PreprocessCfg``'s
        defaults, so the dict means the same here and there. The dict older checkpoints
        stored (``image_size``, ``resize_mode`` pad or crop) reads too.
        """
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        if "image_size" in cfg and "size" not in cfg:
            cfg = {**cfg, "size": cfg["image_size"]}
        merged = merge_preprocess_dict(PreprocessCfg(), cfg)
        size = merged["size"]
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                raise TrafficRetrievalError(f"only square model inputs are supported, got size {list(size)}")
            size = size[0]
        if merged["mode"] != "RGB":
            raise TrafficRetrievalError(f"only RGB model inputs are supported, got mode {merged['mode']!r}")
        return cls(size, merged["resize_mode"], merged["mean"], merged["std"], merged["fill_color"], merged["interpolation"])


def load_image(path: str | Path, draft_size: int | None = None):
    """Open an image as RGB, honouring EXIF orientation; one-line error on failure.

    ``draft_size``: a JPEG may be decoded at a reduced scale (``Image.draft``: JPEG's
    DCT scaling, 1/2 to 1/8) that keeps at least this many pixels a side (thumbnails).

    Any failure to read one file is that file's error, whatever the decoder raised
    (malformed EXIF has raised ``struct.error`` and ``TypeError``), so one odd image
    is counted, never the end of a build; only ``MemoryError`` (and interrupts) pass.
    Images over PIL's ``Image.MAX_IMAGE_PIXELS`` are refused from their header, not
    decoded (a decompression bomb). The limit is checked here rather than by turning
    PIL's warning into an error: warning filters are process-wide, and thumbnails
    are loaded from many threads at once.
    """
    from PIL import Image, ImageOps

    try:
        image = Image.open(path)  # reads the header only; PIL itself raises past twice the limit
        with image:
            width, height = image.size
            if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{width} x {height} pixels")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda value: value * (1 / 256)).convert("L")
            return image.convert("RGB")
    except MemoryError:
        raise
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: image not found") from None
    except Image.DecompressionBombError:
        raise TrafficRetrievalError(f"{path}: image is too large (over {Image.MAX_IMAGE_PIXELS} pixels; decompression bomb protection)") from None
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read image ({_reason(exc.strerror or exc)})") from None
    except Exception as exc:  # noqa: BLE001 - whatever one file makes the decoder raise is that file's error
        raise TrafficRetrievalError(f"{path}: cannot read image ({_reason(exc, _kind(exc))})") from None


def _reason(exc, kind: str | None = None) -> str:
    """A decoder's complaint, bounded and safe to print (it may quote the file's bytes)."""
    text = printable(" ".join(str(exc).split()), 120)
    return f"{kind}: {text}" if kind and text else kind or text or "unknown error"


def _kind(exc: Exception) -> str:
    module = type(exc).__module__
    return type(exc).__name__ if module == "builtins" else f"{module}.{type(exc).__name__}"


def to_square(image, size: int, resize_mode: str, fill_color: int = 0, interpolation: str = "bicubic"):
    """Resize a PIL image to ``size`` x ``size`` as open_clip's inference transform does.

    The same output sizes and offsets as open_clip's ``image_transform`` (longest:
    ``ResizeKeepRatio`` + ``CenterCropOrPad``; squash: ``Resize``; shortest: torchvision's
    ``Resize`` + ``CenterCrop``) and the same PIL resize, hence the same pixels.
    """
    from PIL import Image

    resample = Image.Resampling.BILINEAR if interpolation == "bilinear" else Image.Resampling.BICUBIC
    resize_mode = open_clip_resize_mode(resize_mode)
    width, height = image.size
    if resize_mode == "squash":
        return image.resize((size, size), resample)
    if resize_mode == "shortest":
        # torchvision truncates the long side and rounds the crop offsets half to even
        new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        resized = image.resize(new_size, resample)
        left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
        return resized.crop((left, top, left + size, top + size))
    # longest: the longer side becomes size, centred on the fill colour (at least 1 pixel
    # across, where open_clip would fail on a 1-pixel-wide image)
    ratio = max(height / size, width / size)
    new_size = (max(1, round(width / ratio)), max(1, round(height / ratio)))
    resized = image.resize(new_size, resample)
    canvas = Image.new("RGB", (size, size), (fill_color,) * 3)
    canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def image_to_uint8_tensor(path: str | Path, config: PreprocessConfig):
    """Load, square and resize one image into a CHW uint8 tensor (cacheable form)."""
    import numpy as np
    import torch

    square = to_square(load_image(path), config.size, config.resize_mode, config.fill_color, config.interpolation)
    return torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize_uint8_batch(batch, config: PreprocessConfig, exposure: bool = False):
    """uint8 NCHW -> float NCHW normalised with the model's mean and std; ``exposure``: each
    under-exposed image first brightened to middle grey (``exposure.auto_exposure``; with
    ``longest``, the pixels of the fill colour, the bars the image was centred on, are
    neither metered nor changed)."""
    import torch

    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    if exposure:
        from .exposure import auto_exposure

        content = (batch != config.fill_color).any(dim=1, keepdim=True) if config.resize_mode == "longest" else None
        return (auto_exposure(batch.float() / 255, content=content) * 255 - mean) / std
    return (batch.float() - mean) / std


IN_PROCESS_DECODE_MAX = 512  # fewer images decode faster in this process than DataLoader workers start


@dataclass
class FileFacts:
    """What the reader learnt about a file while reading it (``checksum=True``)."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass
class ImageBatch:
    positions: list[int]  # every input position of this batch, in order
    readable: list[int]  # the positions whose image was decoded, in order
    images: object  # uint8 tensor [len(readable), 3, S, S], or None when none was readable
    errors: dict  # position -> one-line error of an image that could not be read
    files: dict  # position -> FileFacts (only with ``checksum=True``; also for unreadable images when the file itself was read)


class _ImageFiles:
    """A torch-style dataset: position -> (position, uint8 CHW tensor or None, error, FileFacts or None),
    read in DataLoader workers so decoding overlaps encoding."""

    def __init__(self, paths: list[str], preprocess: PreprocessConfig, checksum: bool):
        self.paths, self.preprocess, self.checksum = paths, preprocess, checksum

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        import os

        from ..io import file_sha256

        path, facts = self.paths[position], None
        if self.checksum:
            try:
                stat = os.stat(path)
                facts = FileFacts(file_sha256(path), stat.st_size, stat.st_mtime_ns)
            except OSError as exc:
                return position, None, f"{path}: cannot read image ({exc.strerror or exc})", None
        try:
            return position, image_to_uint8_tensor(path, self.preprocess), None, facts
        except TrafficRetrievalError as exc:
            return position, None, str(exc), facts
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - squaring or resizing one odd image: counted, never the end of the batch
            return position, None, f"{path}: cannot read image ({_reason(exc, _kind(exc))})", facts


def _collate(items) -> ImageBatch:
    import torch

    tensors = [tensor for _, tensor, _, _ in items if tensor is not None]
    return ImageBatch(
        positions=[position for position, *_ in items],
        readable=[position for position, tensor, _, _ in items if tensor is not None],
        images=torch.stack(tensors) if tensors else None,
        errors={position: error for position, tensor, error, _ in items if tensor is None},
        files={position: facts for position, _, _, facts in items if facts is not None},
    )


def read_image_batches(paths: list, preprocess: PreprocessConfig, batch_size: int = 256, workers: int = 2, batches: list[list[int]] | None = None,
                       checksum: bool = False, progress: bool = False, description: str = "decode"):
    """The one image reader (training cache, predict, augment, index): yields an
    ``ImageBatch`` per batch of ``paths`` (or per list of positions in ``batches``), decoded
    by the one loader and preprocessing in DataLoader workers. Unreadable images are
    reported in the batch, never raised. Workers pay off only when decoding can overlap
    the consumer and outweigh their start-up (about 0.5 s here): ``b`` batches get at most
    ``b - 1`` of them, and fewer than ``IN_PROCESS_DECODE_MAX`` images decode in-process."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batches is None:
        batches = [list(range(start, min(start + batch_size, len(paths)))) for start in range(0, len(paths), max(1, batch_size))]
    workers = 0 if len(paths) < IN_PROCESS_DECODE_MAX else min(workers, max(0, len(batches) - 1))
    loader = DataLoader(_ImageFiles([str(p) for p in paths], preprocess, checksum), batch_sampler=batches, num_workers=workers, collate_fn=_collate)
    with tqdm(total=sum(len(b) for b in batches), desc=description, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch.positions))
