"""BatchNorm statistics of an index (``gallery_bn: adapt``, AdaBN: ``retrieval/adapt.py``).

An index built with ``gallery_bn: adapt`` encodes its gallery with the image tower's
BatchNorm statistics re-estimated on that gallery. They are estimated once, by the first
build, on an evenly spaced sample of the gallery (``adapt.adaptation_sample``), written
to ``bn_stats.safetensors`` in the index folder and recorded (file, sha256, images) in
the index's metadata and index.json. Every later update, every rank of a torchrun build
and every ``Retriever`` (so a query by image) load that file: the whole index lives in
one embedding space. The setting of an index that holds embeddings cannot change (its
shards would mix two spaces, ``encoding.fixed_setting``): that asks for a new ``--out``.

The file comes from an index folder, so it is untrusted: safetensors holds tensors only
(reading it runs no code), its size is capped, its sha256 must be the recorded one and
every tensor must fit the model's BatchNorm layers (``adapt.load_batchnorm``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from .info import BN_STATS_FILE  # the file's name, which index.json must name

MAX_BN_STATS_BYTES = 64 * 1024 * 1024  # far above any image tower's BatchNorm buffers (ResNet-50x64: under 1 MB)
META_KEY = "gallery_bn"  # IndexStore meta: {"setting": "none" | "adapt", "stats": record or None}


def prepare_batchnorm(root: Path, store, layout, loaded, asked: str | None, gallery_files: list[str], runtime, batch_size: int, workers: int,
                      progress: bool, image_tta: str = "none") -> tuple[str, dict | None]:
    """(Rank 0, before encoding.) ``(setting, statistics record)`` the build encodes with.
    An index that holds embeddings keeps its setting (``asked`` None: it; another one is
    refused) and its statistics file; a new one takes ``asked`` (else the checkpoint's
    recipe) and, for ``adapt``, estimates the statistics on ``gallery_files`` (paths
    relative to ``root``, sorted) and writes them. The record is None with the training
    statistics (``none``, or a model without BatchNorm)."""
    from ..retrieval.adapt import batchnorm_layers
    from .encoding import fixed_setting

    recorded = store.meta(META_KEY)
    recorded = recorded if isinstance(recorded, dict) else {"setting": "none", "stats": None}  # an index from before: the training statistics
    setting = fixed_setting(store, layout.root, META_KEY, asked, recorded.get("setting", "none"), loaded)
    if setting != "adapt" or not batchnorm_layers(loaded.model):
        store.set_meta(META_KEY, {"setting": setting, "stats": None})
        return setting, None
    if recorded.get("setting") == "adapt" and recorded.get("stats"):  # an update, or a resumed build: the statistics it encoded with
        load_index_batchnorm(layout.root, recorded["stats"], loaded.model)
        return setting, recorded["stats"]
    record = _estimate_and_write(root, layout, loaded, gallery_files, runtime, batch_size, workers, progress, image_tta)
    store.set_meta(META_KEY, {"setting": setting, "stats": record})
    return setting, record


def _estimate_and_write(root: Path, layout, loaded, gallery_files: list[str], runtime, batch_size: int, workers: int, progress: bool,
                        image_tta: str) -> dict:
    from safetensors.torch import save_file

    from ..io import atomic_path, file_sha256
    from ..retrieval.adapt import adaptation_sample, batchnorm_state
    from ..retrieval.encode import adapt_batchnorm_to_files

    if adapt_batchnorm_to_files(loaded, [str(root / path) for path in gallery_files], runtime, batch_size, workers, progress, image_tta) is None:
        raise TrafficRetrievalError(f"{root}: fewer than 2 gallery images could be read, too few to estimate BatchNorm statistics (gallery_bn adapt)")
    path = layout.root / BN_STATS_FILE
    with atomic_path(path) as tmp:
        save_file({key: value.contiguous() for key, value in batchnorm_state(loaded.model).items()}, str(tmp))
    return {"file": BN_STATS_FILE, "sha256": file_sha256(path), "images": len(adaptation_sample(len(gallery_files)))}


def load_index_batchnorm(index_root: Path, record: dict, model) -> None:
    """Load an index's recorded BatchNorm statistics into ``model`` (checked: module docstring)."""
    from ..io import read_recorded_safetensors
    from ..retrieval.adapt import load_batchnorm

    path = Path(index_root) / BN_STATS_FILE
    if not isinstance(record, dict) or record.get("file") != BN_STATS_FILE:
        raise TrafficRetrievalError(f"{index_root}: bn_stats must name {BN_STATS_FILE}, got {record!r:.80}")
    stats = read_recorded_safetensors(path, record.get("sha256"), MAX_BN_STATS_BYTES, "BatchNorm statistics", "gallery_bn adapt", framework="torch")
    load_batchnorm(model, stats, str(path))
