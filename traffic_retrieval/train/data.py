"""Training data in memory: images decoded, squared and resized once into a
uint8 tensor cache (the main speed lever on a CPU), captions tokenized once,
and ATTR strings mapped to integer ids for the multi-positive loss."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.images import PreprocessConfig, read_image_batches
from ..errors import TrafficRetrievalError
from ..io import atomic_path, atomic_write_json
from ..model.tokens import tokenize


@dataclass
class TrainingSet:
    rows: list[dict]  # manifest rows whose image could be read
    images: "DecodedImages"  # images[row_index] -> uint8 tensor (rows x 3 x S x S)
    tokens: object  # int tensor N x context_length
    attr_ids: object  # int tensor N: equal id <=> equal ATTR
    category_ids: object  # int tensor N: 0 pedestrian, 1 vehicle
    unreadable: list[str]  # one-line errors of images that were skipped


class DecodedImages:
    """Decoded uint8 images (N x 3 x S x S) addressed by row, backed by RAM or by a
    memory-mapped ``.npy`` file, so a 136k-image training set at 224 px (20 GB) lives
    on disk and in the page cache rather than in the process's memory."""

    def __init__(self, array, slots):
        import torch

        self.array = array  # numpy array or memmap, one slot per input path
        self.slots = torch.as_tensor(slots, dtype=torch.long)  # row -> slot

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index):
        import numpy as np
        import torch

        slots = self.slots[index]
        if slots.ndim == 0:
            return torch.from_numpy(np.ascontiguousarray(self.array[int(slots)]))
        return torch.from_numpy(np.ascontiguousarray(self.array[slots.numpy()]))


def decode_images(paths: list[str], preprocess: PreprocessConfig, workers: int = 2, batch_size: int = 64, description: str = "decode", into=None):
    """Decode images in DataLoader workers into ``into`` (an array N x 3 x S x S; a new
    in-memory one by default). Returns (array, readable indices, one-line errors)."""
    import numpy as np

    size = preprocess.size
    images = into if into is not None else np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    readable: list[int] = []
    errors: list[str] = []
    for batch in read_image_batches(paths, preprocess, batch_size, workers, progress=True, description=description):
        if batch.images is not None:
            images[batch.readable] = batch.images.numpy()
            readable += batch.readable
        errors += list(batch.errors.values())
    return images, sorted(readable), errors


def cached_images(rows: list[dict], preprocess: PreprocessConfig, cache_dir: Path | None, workers: int) -> tuple[DecodedImages, list[int], list[str]]:
    """Decoded images for manifest rows, cached on disk (a memory-mapped .npy plus a JSON
    of readable indices and errors) keyed by (paths, sizes, mtimes, preprocessing)."""
    import numpy as np

    paths = [r["image"] for r in rows]
    if cache_dir is None:
        images, readable, errors = decode_images(paths, preprocess, workers)
        return DecodedImages(images, readable), readable, errors
    key_source = json.dumps([preprocess.to_open_clip_preprocess_cfg(), [(p, _stat(p)) for p in paths]], sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    array_path, meta_path = Path(cache_dir) / f"images-{key}.npy", Path(cache_dir) / f"images-{key}.json"
    if array_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(array_path, mmap_mode="r")
            if array.shape[0] == len(paths):
                return DecodedImages(array, meta["readable"]), meta["readable"], meta["errors"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt, never trusted
    size = preprocess.size
    with atomic_path(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
        _, readable, errors = decode_images(paths, preprocess, workers, into=array)
        array.flush()
        del array
    atomic_write_json(meta_path, {"readable": readable, "errors": errors})
    return DecodedImages(np.load(array_path, mmap_mode="r"), readable), readable, errors


def _stat(path: str) -> tuple[int, int]:
    try:
        stat = Path(path).stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return -1, -1


def build_training_set(rows: list[dict], preprocess: PreprocessConfig, tokenizer, cache_dir: Path | None, workers: int,
                       text_form: str = "sentence") -> TrainingSet:
    """The decoded images, ATTR ids and tokenized captions of ``rows``; each caption in
    ``text_form`` (``data/text_forms.training_caption``: a3r trains vehicles on the bare phrase)."""
    import torch

    from ..data.text_forms import training_caption

    if not rows:
        raise TrafficRetrievalError("no training rows: run `traffic-retrieval prepare` first, or check its report")
    images, readable, errors = cached_images(rows, preprocess, cache_dir, workers)
    rows = [rows[i] for i in readable]  # images is addressed by these rows already
    if not rows:
        raise TrafficRetrievalError(f"none of the training images could be read (first error: {errors[0] if errors else 'unknown'})")
    attr_index: dict[str, int] = {}
    attr_ids = torch.tensor([attr_index.setdefault(f"{r['category']}|{r['attr']}", len(attr_index)) for r in rows])
    category_ids = torch.tensor([0 if r["category"] == "pedestrian" else 1 for r in rows])
    captions = [training_caption(r["text"], r["category"], text_form) for r in rows]
    return TrainingSet(rows, images, tokenize(tokenizer, captions), attr_ids, category_ids, errors)


def load_run_data(work: Path, manifest: str, preprocess: PreprocessConfig, tokenizer, workers: int, context, with_val: bool = True,
                  text_form: str = "sentence"):
    """(training set, val set or None) of a prepare output: WORK/manifests/<manifest>.jsonl,
    and WORK/manifests/val.jsonl on rank 0 when ``with_val`` and it has rows (``load_val_set``
    reads the camera-domain val split the same way). Rank 0 fills the decoded-image cache
    (WORK/cache) first; the other ranks then read it."""
    from ..io import read_jsonl
    from ..runtime import barrier

    work = Path(work)
    train_rows = read_jsonl(work / "manifests" / f"{manifest}.jsonl")
    if context.is_main:
        training_set = build_training_set(train_rows, preprocess, tokenizer, work / "cache", workers, text_form)
    barrier(context)
    if not context.is_main:
        training_set = build_training_set(train_rows, preprocess, tokenizer, work / "cache", workers, text_form)
    val_set = load_val_set(work, "val", preprocess, tokenizer, workers, context, text_form) if with_val else None
    return training_set, val_set


def load_val_set(work: Path, split: str, preprocess: PreprocessConfig, tokenizer, workers: int, context, text_form: str = "sentence"):
    """The decoded val set of WORK/manifests/<split>.jsonl (``val``, or the camera-domain
    ``val_camera``) on rank 0; None on the other ranks, or where the manifest is absent or empty."""
    from ..io import read_jsonl

    path = Path(work) / "manifests" / f"{split}.jsonl"
    if not context.is_main or not path.is_file():
        return None
    rows = read_jsonl(path)
    return build_training_set(rows, preprocess, tokenizer, Path(work) / "cache", workers, text_form) if rows else None
