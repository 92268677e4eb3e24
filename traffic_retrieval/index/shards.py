"""Encoding planned shards: files stream through the one image loader
(``ImageFileDataset`` in DataLoader workers: decode, square, resize), which also
checksum each file, and through the image tower in batches that never cross a
shard, so a shard's embeddings do not depend on which run or rank encoded it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..data.images import ImageFileDataset
from ..model.factory import file_sha256
from .store import IndexLayout, write_shard


class ChecksummedImageFiles:
    """``ImageFileDataset`` items plus the file's sha256, size and mtime, read in the worker."""

    def __init__(self, paths: list[str], preprocess):
        self.images = ImageFileDataset(paths, preprocess)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        path = self.images.paths[index]
        try:
            stat = os.stat(path)
            digest = file_sha256(path)
        except OSError as exc:
            return index, None, f"{path}: cannot read image ({exc.strerror or exc})", None, 0, 0
        _, tensor, error = self.images[index]
        return index, tensor, error, digest, stat.st_size, stat.st_mtime_ns


def collate_checksummed(items):
    import torch

    tensors = [tensor for _, tensor, *_ in items if tensor is not None]
    return items, (torch.stack(tensors) if tensors else None)


def shard_batches(shard_sizes: list[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """``(shard position, dataset indices)`` per batch; batches stop at shard ends."""
    batches, start = [], 0
    for position, size in enumerate(shard_sizes):
        for offset in range(0, size, batch_size):
            batches.append((position, list(range(start + offset, start + min(offset + batch_size, size)))))
        start += size
    return batches


def encode_shards(loaded, root: Path, shards: list[tuple[int, list[tuple[int, str]]]], layout: IndexLayout, identity: str, device: str, dtype,
                  batch_size: int, workers: int, progress: bool, on_shard_written: Callable[[int, list[dict]], None], description: str = "index") -> dict:
    """Encode ``shards`` (``(shard, [(id, relative path)])``), write each one as soon as its
    last batch is done and call ``on_shard_written(shard, rows)``. Returns counts."""
    import numpy as np
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..retrieval.encode import encode_uint8_images

    stats = {"shards": 0, "images": 0, "encoded": 0, "unreadable": []}
    if not shards:
        return stats
    entries = [entry for _, rows in shards for entry in rows]
    dataset = ChecksummedImageFiles([str(root / path) for _, path in entries], loaded.preprocess)
    batches = shard_batches([len(rows) for _, rows in shards], batch_size)
    loader = DataLoader(dataset, batch_sampler=[indices for _, indices in batches], num_workers=workers, collate_fn=collate_checksummed)
    model = loaded.model.eval()
    dim = None
    pending_rows: list[dict] = []
    pending_embeddings: list = []
    next_row = 0  # row of the next readable image in the current shard
    with tqdm(total=len(entries), desc=description, unit="img", disable=not progress, leave=False) as bar:
        for batch_number, (items, batch) in enumerate(loader):
            shard_position = batches[batch_number][0]
            if batch is not None:
                embeddings = encode_uint8_images(model, batch, loaded.preprocess, device, dtype, batch_size)
                dim = embeddings.shape[1]
                pending_embeddings.append(embeddings.numpy())
            for index, tensor, error, digest, size, mtime_ns in items:
                image_id, path = entries[index]
                row = None
                if tensor is not None:
                    row, next_row = next_row, next_row + 1
                else:
                    stats["unreadable"].append(error)
                pending_rows.append({"id": image_id, "path": path, "sha256": digest, "size": size, "mtime_ns": mtime_ns, "row": row, "error": error})
            bar.update(len(items))
            last_of_shard = batch_number + 1 == len(batches) or batches[batch_number + 1][0] != shard_position
            if last_of_shard:
                shard = shards[shard_position][0]
                if pending_embeddings:
                    shard_embeddings = np.concatenate(pending_embeddings)
                else:
                    shard_embeddings = np.zeros((0, dim or embedding_dim(loaded)), dtype=np.float32)
                write_shard(layout, shard, shard_embeddings, pending_rows, identity)
                on_shard_written(shard, pending_rows)
                stats["shards"] += 1
                stats["images"] += len(pending_rows)
                stats["encoded"] += len(shard_embeddings)
                pending_rows, pending_embeddings, next_row = [], [], 0
    return stats


def embedding_dim(loaded) -> int:
    """The model's embedding width (for an empty shard, before any image was encoded)."""
    model = loaded.model
    projection = getattr(model, "text_projection", None)
    if projection is not None:
        return int(projection.weight.shape[0] if hasattr(projection, "weight") else projection.shape[1])
    return int(getattr(model.visual, "output_dim"))
