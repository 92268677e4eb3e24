"""Encoding planned shards: files stream through the one image reader
(``data.images.read_image_batches``: decode, square, resize in DataLoader workers),
which also checksums each file, and through the image tower in batches that never
cross a shard, so a shard's embeddings do not depend on which run or rank encoded it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .store import IndexLayout, write_shard


def shard_batches(shard_sizes: list[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """``(shard position, dataset indices)`` per batch; batches stop at shard ends."""
    batches, start = [], 0
    for position, size in enumerate(shard_sizes):
        for offset in range(0, size, batch_size):
            batches.append((position, list(range(start + offset, start + min(offset + batch_size, size)))))
        start += size
    return batches


def encode_shards(loaded, root: Path, shards: list[tuple[int, list[tuple[int, str]]]], layout: IndexLayout, identity: str, device: str, dtype,
                  batch_size: int, workers: int, progress: bool, on_shard_written: Callable[[int, list[dict]], None], description: str = "index",
                  image_tta: str = "none") -> dict:
    """Encode ``shards`` (``(shard, [(id, relative path)])``, each image with ``image_tta``:
    ``encode.encode_uint8_images``), write each one as soon as its last batch is done and
    call ``on_shard_written(shard, rows)``. Returns counts."""
    import numpy as np

    from ..data.images import read_image_batches
    from ..retrieval.encode import encode_uint8_images

    stats = {"shards": 0, "images": 0, "encoded": 0, "unreadable": []}
    if not shards:
        return stats
    entries = [entry for _, rows in shards for entry in rows]
    batches = shard_batches([len(rows) for _, rows in shards], batch_size)
    reader = read_image_batches([root / path for _, path in entries], loaded.preprocess, batch_size, workers, batches=[positions for _, positions in batches],
                                checksum=True, progress=progress, description=description)
    model = loaded.model.eval()
    dim = None
    pending_rows: list[dict] = []
    pending_embeddings: list = []
    next_row = 0  # row of the next readable image in the current shard
    for batch_number, batch in enumerate(reader):
        shard_position = batches[batch_number][0]
        if batch.images is not None:
            embeddings = encode_uint8_images(model, batch.images, loaded.preprocess, device, dtype, batch_size, image_tta)
            dim = embeddings.shape[1]
            pending_embeddings.append(embeddings.numpy())
        for position in batch.positions:
            image_id, path = entries[position]
            error, facts = batch.errors.get(position), batch.files.get(position)
            row = None
            if error is None:
                row, next_row = next_row, next_row + 1
            else:
                stats["unreadable"].append(error)
            pending_rows.append({"id": image_id, "path": path, "sha256": facts.sha256 if facts else None, "size": facts.size if facts else 0,
                                 "mtime_ns": facts.mtime_ns if facts else 0, "row": row, "error": error})
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
