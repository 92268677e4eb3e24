"""Training data in memory: images decoded, squared and resized once into a
uint8 tensor cache (the main speed lever on a CPU), captions tokenized once,
and ATTR strings mapped to integer ids for the multi-positive loss."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.images import ImageFileDataset, PreprocessConfig, collate_images
from ..errors import TrafficRetrievalError
from ..io import atomic_torch_save


@dataclass
class TrainingSet:
    rows: list[dict]  # manifest rows whose image could be read
    images: object  # uint8 tensor N x 3 x S x S
    tokens: object  # int tensor N x context_length
    attr_ids: object  # int tensor N: equal id <=> equal ATTR
    category_ids: object  # int tensor N: 0 pedestrian, 1 vehicle
    unreadable: list[str]  # one-line errors of images that were skipped


def decode_images(paths: list[str], preprocess: PreprocessConfig, workers: int = 2, batch_size: int = 64, description: str = "decode"):
    """Decode images in DataLoader workers: returns (uint8 tensor of readable images, readable indices, errors)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(
        ImageFileDataset(paths, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
    )
    size = preprocess.image_size
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    readable = torch.zeros(len(paths), dtype=torch.bool)
    errors: list[str] = []
    with tqdm(total=len(paths), desc=description, unit="img", leave=False) as bar:
        for indices, batch, batch_errors in loader:
            if batch is not None:
                images[indices] = batch
                readable[indices] = True
            errors += [message for _, message in batch_errors]
            bar.update(len(indices) + len(batch_errors))
    keep = readable.nonzero().flatten()
    return images[keep], keep.tolist(), errors


def cached_images(rows: list[dict], preprocess: PreprocessConfig, cache_dir: Path | None, workers: int):
    """Decoded images for manifest rows, cached on disk by (paths, sizes, mtimes, preprocessing)."""
    import torch

    key_source = json.dumps(
        [preprocess.to_dict(), [(r["image"], _stat(r["image"])) for r in rows]], sort_keys=True
    )
    cache_path = Path(cache_dir) / f"images-{hashlib.sha256(key_source.encode()).hexdigest()[:16]}.pt" if cache_dir else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = torch.load(cache_path, weights_only=True)
            return cached["images"], cached["readable"], cached["errors"]
        except Exception:
            cache_path.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    images, readable, errors = decode_images([r["image"] for r in rows], preprocess, workers)
    if cache_path is not None:
        atomic_torch_save({"images": images, "readable": readable, "errors": errors}, cache_path)
    return images, readable, errors


def _stat(path: str) -> tuple[int, int]:
    try:
        stat = Path(path).stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return -1, -1


def tokenize(tokenizer, texts: list[str], batch_size: int = 4096):
    import torch

    if not texts:
        return torch.zeros((0, getattr(tokenizer, "context_length", 77)), dtype=torch.long)
    return torch.cat([tokenizer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])


def build_training_set(rows: list[dict], preprocess: PreprocessConfig, tokenizer, cache_dir: Path | None, workers: int) -> TrainingSet:
    import torch

    if not rows:
        raise TrafficRetrievalError("no training rows: run `traffic-retrieval prepare` first, or check its report")
    images, readable, errors = cached_images(rows, preprocess, cache_dir, workers)
    rows = [rows[i] for i in readable]
    if not rows:
        raise TrafficRetrievalError(f"none of the training images could be read (first error: {errors[0] if errors else 'unknown'})")
    attr_index: dict[str, int] = {}
    attr_ids = torch.tensor([attr_index.setdefault(f"{r['category']}|{r['attr']}", len(attr_index)) for r in rows])
    category_ids = torch.tensor([0 if r["category"] == "pedestrian" else 1 for r in rows])
    return TrainingSet(rows, images, tokenize(tokenizer, [r["text"] for r in rows]), attr_ids, category_ids, errors)
