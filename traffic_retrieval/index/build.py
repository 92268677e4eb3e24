"""``build_index``: build or update the persistent gallery index (the library behind
the ``index`` command, ``commands/index.py``), in one process or under torchrun.

1. (rank 0) check the model (a checkpoint, or an open_clip model and its weights:
   ``source.py``) against the one the index was built with, commit shards a
   killed run wrote but did not record, scan the gallery, plan: new and changed
   files go to new shards, deleted ones are dropped (``plan.py``);
2. (every rank) encode its share of the pending shards (``shards.py``); rank 0
   commits each of its shards as it is written;
3. (rank 0) commit the other ranks' shards, apply labels, categorise new images
   (``gallery_categories``: by the checkpoint's stored captions, or by prompts for an
   open_clip model, as ``predict`` does), rebuild the per-category FAISS indexes when the
   indexed set changed (``faiss_index.py``) and write ``index.json``, the commit
   point of the build, then the report.

Gallery normalisation (``retrieval/adapt.py``, issue #14): the shards always hold the raw
embeddings. Whenever the FAISS indexes are rebuilt, the mean of the indexed embeddings is
computed streaming from the shards and recorded in index.json (``faiss.gallery_mean``);
with ``gallery_norm="center"`` (unset: the checkpoint's recorded recipe, else ``none``)
FAISS is built on the centred, re-normalised vectors, and ``faiss.gallery_norm`` says so.
Changing the setting on an existing index rebuilds only the FAISS indexes.
"""

from __future__ import annotations

import os
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import TrafficRetrievalError
from ..runtime import DistributedContext
from .faiss_index import AnnConfig, check_kind
from .info import faiss_file_name
from .store import EMBEDDING_DTYPE, INDEX_FORMAT, IndexLayout, IndexStore, ShardReader, index_lock, read_shard_rows, shard_files_on_disk

CATEGORIZE_BLOCK = 65536


@dataclass(frozen=True)
class BuildSettings:
    """What a build was asked to do (``build_index``'s arguments), recorded in index.json."""

    images: Path
    checkpoint: Path | None
    out: Path
    labels: Path | None
    ann: AnnConfig
    shard_size: int
    batch_size: int
    workers: int
    device: str
    precision: str
    progress: bool
    trust_checkpoint: bool = False
    model: str | None = None  # zero-shot: an open_clip model ...
    pretrained: str | None = None  # ... and its pretrained tag or weights file
    gallery_norm: str | None = None  # options.GalleryNorm; None: the checkpoint's recorded recipe, else none
    gallery_bn: str | None = None  # options.GalleryBn; None: the checkpoint's recorded recipe, else none (index/batchnorm.py)
    image_tta: str | None = None  # options.ImageTta; None: the checkpoint's recorded recipe, else none (index/encoding.py)
    query_bank: str | None = None  # options.QueryBank; None: the checkpoint's recorded recipe, else none (index/query_bank.py)
    query_bank_beta: float | None = None  # with query_bank captions; None: the recipe's, else adapt.DEFAULT_BANK_BETA

    def describe(self) -> dict:
        ann = {key: value for key, value in vars(self.ann).items() if key != "progress"}
        return {"images": str(self.images), "checkpoint": str(self.checkpoint) if self.checkpoint else None, "model": self.model,
                "pretrained": self.pretrained, "out": str(self.out), "labels": str(self.labels) if self.labels else None,
                **ann, "shard_size": self.shard_size, "batch_size": self.batch_size, "workers": self.workers, "device": self.device,
                "precision": self.precision, "gallery_norm": self.gallery_norm, "gallery_bn": self.gallery_bn,
                "image_tta": self.image_tta, "query_bank": self.query_bank, "query_bank_beta": self.query_bank_beta}


def _check(settings: BuildSettings) -> dict:
    """The settings checked before anything is read or loaded; the requested model source."""
    from .source import requested_source

    check_kind(settings.ann.kind)
    if not Path(settings.images).is_dir():
        raise TrafficRetrievalError(f"{settings.images}: gallery directory not found")
    if settings.labels is not None and not Path(settings.labels).is_file():
        raise TrafficRetrievalError(f"{settings.labels}: label file not found")
    for key, value, minimum in (("batch_size", settings.batch_size, 1), ("shard_size", settings.shard_size, 1), ("workers", settings.workers, 0),
                                ("flat_max", settings.ann.flat_max, 0), ("reduce_dim", settings.ann.reduce_dim, 0)):
        if value < minimum:
            raise TrafficRetrievalError(f"{key} must be {'zero or more' if minimum == 0 else f'at least {minimum}'}, got {value}")
    if settings.gallery_norm is not None:
        from ..retrieval.adapt import check_gallery_norm

        check_gallery_norm(settings.gallery_norm)
    if settings.gallery_bn is not None:
        from ..retrieval.adapt import check_gallery_bn

        check_gallery_bn(settings.gallery_bn)
    if settings.image_tta is not None:
        from ..retrieval.adapt import check_image_tta

        check_image_tta(settings.image_tta)
    if settings.query_bank is not None:
        from ..retrieval.adapt import check_query_bank

        check_query_bank(settings.query_bank)
    if settings.query_bank_beta is not None:
        from ..retrieval.adapt import check_bank_beta

        check_bank_beta(settings.query_bank_beta)
    if not 0 < settings.ann.recall_target <= 1:
        raise TrafficRetrievalError(f"recall_target must be in (0, 1], got {settings.ann.recall_target}")
    source = requested_source(settings.checkpoint, settings.model, settings.pretrained)
    if source is None:
        raise TrafficRetrievalError("index needs --checkpoint (a trained model) or --model and --pretrained (an open_clip model, zero-shot)")
    if source["kind"] == "checkpoint" and not Path(source["path"]).is_file():
        raise TrafficRetrievalError(f"{settings.checkpoint}: checkpoint not found")
    return source


def build_index(images: str | Path, checkpoint: str | Path | None, out: str | Path, *, labels: str | Path | None = None, ann: AnnConfig | None = None,
                shard_size: int = 4096, batch_size: int = 256, workers: int = 2, device: str = "auto", precision: str = "auto",
                progress: bool = True, trust_checkpoint: bool = False, model: str | None = None, pretrained: str | None = None,
                gallery_norm: str | None = None, gallery_bn: str | None = None, image_tta: str | None = None,
                query_bank: str | None = None, query_bank_beta: float | None = None) -> dict:
    """Build or update the index at ``out`` of the gallery folder ``images`` with the
    model of ``checkpoint``, or (``checkpoint=None``) zero-shot with the open_clip ``model``
    and its ``pretrained`` tag or weights file (``model="hf-hub:ORG/REPO"``: no ``pretrained``);
    the model is recorded in index.json (``source.py``). Returns the build report (rank 0's is complete; under
    torchrun the other ranks return their encoding counts and ``rank``).

    ``labels``: an ``IMAGE$ATTR$TEXT`` file; ``ann``: the FAISS settings (kind, recall
    target, ...); ``shard_size``: images per embedding shard, the unit of resumption;
    ``workers``: image decoding processes; ``precision``: ``options.Precision``;
    ``gallery_norm``: ``options.GalleryNorm``, how the FAISS indexes hold the gallery (None:
    the checkpoint's recorded query recipe, else ``none``; the shards hold raw embeddings);
    ``gallery_bn``: ``options.GalleryBn``, the image tower's BatchNorm statistics the gallery
    is encoded with (None: the recipe's, else ``none``; fixed for the index's life: ``batchnorm.py``);
    ``image_tta``: ``options.ImageTta``, each image encoded as it is or as the mean of it and
    its mirror (None: the recipe's, else ``none``; fixed for the index's life: ``encoding.py``);
    ``query_bank`` / ``query_bank_beta``: ``options.QueryBank``, how text queries are ranked
    (None: the recipe's, else ``none``; changing them rebuilds only FAISS: ``query_bank.py``).
    """
    from ..runtime import autocast_dtype, cleanup, init_distributed, local_device, resolve_device

    ann = ann or AnnConfig(progress=progress)
    settings = BuildSettings(Path(images), Path(checkpoint) if checkpoint is not None else None, Path(out), Path(labels) if labels is not None else None,
                             ann, shard_size, batch_size, workers, device, precision, progress, trust_checkpoint, model, pretrained, gallery_norm,
                             gallery_bn, image_tta, query_bank, query_bank_beta)
    source = _check(settings)
    started = time.perf_counter()
    device = resolve_device(device)
    # generous timeout: the other ranks wait while rank 0 scans and checksums the gallery
    context = init_distributed(device, timeout_hours=2)
    try:
        device = local_device(device, context)
        return _build(settings, source, context, device, autocast_dtype(precision, device), started)
    except OSError as exc:  # a full disk, a read-only folder: one line naming the file; the next run resumes
        raise TrafficRetrievalError(f"{exc.filename2 or exc.filename or settings.out}: {exc.strerror or exc}") from None
    finally:
        cleanup(context)


def _build(settings: BuildSettings, requested: dict, context: DistributedContext, device: str, dtype, started: float) -> dict:
    from ..runtime import all_gather_objects, scatter_objects
    from .shards import encode_shards
    from .source import load_source, loaded_source

    loaded = load_source(requested, device, settings.trust_checkpoint)
    source = loaded_source(requested, loaded)
    layout = IndexLayout(settings.out)
    root = settings.images
    with index_lock(layout) if context.is_main else nullcontext():
        store = IndexStore(layout.meta_db) if context.is_main else None
        try:
            # 1. plan (rank 0), then every rank learns its shards or the planning error
            per_rank = None
            if context.is_main:
                try:
                    prepared = _prepare(settings, layout, store, loaded, source, device, dtype)
                    per_rank = [("ok", (prepared["shards"][r :: context.world_size], prepared["bn_stats"], prepared["image_tta"]))
                                for r in range(context.world_size)]
                except TrafficRetrievalError as exc:
                    if not context.enabled:
                        raise
                    per_rank = [("error", str(exc))] * context.world_size
            status, payload = scatter_objects(per_rank, context)
            if status == "error":
                raise TrafficRetrievalError(payload)
            my_shards, bn_stats, image_tta = payload
            if bn_stats is not None and not context.is_main:  # the statistics rank 0 estimated (or the index had): one embedding space
                from .batchnorm import load_index_batchnorm

                load_index_batchnorm(layout.root, bn_stats, loaded.model)

            # 2. encode this rank's shards; rank 0 records each of its shards at once
            on_written = (lambda shard, rows: store.commit_shard(shard, rows)) if context.is_main else (lambda shard, rows: None)
            error, stats = None, {"shards": 0, "images": 0, "encoded": 0, "unreadable": []}
            try:
                stats = encode_shards(loaded, root, my_shards, layout, loaded.identity, device, dtype, settings.batch_size, settings.workers,
                                      settings.progress and context.is_main, on_written, description=f"index {root.name}", image_tta=image_tta)
            except Exception as exc:
                if not context.enabled:
                    raise
                traceback.print_exc()
                error = f"rank {context.rank}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            results = all_gather_objects((error, stats), context)
            failures = [e for e, _ in results if e]
            if failures:
                raise TrafficRetrievalError(f"encoding failed on {failures[0]}")
            if not context.is_main:
                return {"rank": context.rank, "shards": stats["shards"], "encoded": stats["encoded"]}

            # 3. finish (rank 0)
            return _finish(settings, layout, store, loaded, source, device, dtype, prepared, [s for _, s in results], context, started)
        finally:
            if store is not None:
                store.close()


def _check_source(settings: BuildSettings, store: IndexStore, loaded, source: dict) -> None:
    """A new index records its model; an existing one is updated only by the same model
    (``source.same_model``: the same checkpoint or weights sha256, model name and tag)."""
    from .source import describe, same_model

    identity = store.meta("identity")
    if identity is None:
        store.set_metas({"format": INDEX_FORMAT, "identity": loaded.identity, "model": loaded.model_name})
    else:
        recorded = store.meta("source")
        if recorded is None:  # an index written before sources were recorded: a checkpoint's
            recorded = {"kind": "checkpoint", "path": store.meta("checkpoint"), "sha256": identity}
        if identity != loaded.identity or not same_model(recorded, source):
            raise TrafficRetrievalError(f"{settings.out}: this index was built with {describe(recorded)}, {describe(source)} is a different model: "
                                        "use the same model or a new --out")
    # where the model is now (a checkpoint or weights file may have moved)
    store.set_metas({"source": source, "checkpoint": source["path"] if source["kind"] == "checkpoint" else None})


def _recover_written_shards(layout: IndexLayout, store: IndexStore, identity: str) -> int:
    """Commit shards whose files are complete but whose rows are still pending
    (a run killed between writing and recording, or another rank's shards)."""
    recovered = 0
    for shard, _ in store.pending_shards():
        document = read_shard_rows(layout, shard)
        if document is not None and document.get("identity") == identity:
            recovered += store.commit_shard(shard, document["rows"])
    return recovered


def _remove_stale_files(layout: IndexLayout, store: IndexStore) -> None:
    """Temporary files of killed writes, shards no row refers to any more, and partial
    files of shards still pending (they are encoded again)."""
    by_shard, leftovers = shard_files_on_disk(layout)
    referenced = store.referenced_shards()
    pending = {shard for shard, _ in store.pending_shards()}
    for path in leftovers + [p for shard, paths in by_shard.items() if shard not in referenced or shard in pending for p in paths]:
        path.unlink(missing_ok=True)


def _prepare(settings: BuildSettings, layout: IndexLayout, store: IndexStore, loaded, source: dict, device: str, dtype) -> dict:
    from ..io import file_sha256
    from ..runtime import Runtime
    from .batchnorm import prepare_batchnorm
    from .encoding import prepare_image_tta
    from .plan import plan_update
    from .scan import scan_gallery_entries

    _check_source(settings, store, loaded, source)
    if _query_bank(settings, loaded)[0] != "none":  # a model without stored captions: refused now, not after encoding the gallery
        from ..retrieval.encode import bank_captions

        bank_captions((loaded.checkpoint or {}).get("category_texts"))
    recovered = _recover_written_shards(layout, store, loaded.identity)
    _remove_stale_files(layout, store)
    root = settings.images
    scan = scan_gallery_entries(root)
    files = scan.files
    if not files:
        raise TrafficRetrievalError(f"{root}: no images (.jpg, .jpeg, .png, .bmp, .webp) found"
                                    + (f" ({sum(scan.counts().values())} entries skipped: not regular files or links out of the gallery)"
                                       if any(scan.counts().values()) else ""))
    image_tta = prepare_image_tta(store, layout.root, settings.image_tta, loaded)  # first: AdaBN's statistics are of the images as encoded
    gallery_bn, bn_stats = prepare_batchnorm(root, store, layout, loaded, settings.gallery_bn, [f.path for f in files], Runtime(device, dtype),
                                             settings.batch_size, settings.workers, settings.progress, image_tta)
    plan = plan_update(files, store.stats_by_path(), root, file_sha256)
    store.apply_plan(plan, settings.shard_size)
    store.set_meta("images", str(root.resolve()))
    return {"plan": plan, "files": len(files), "recovered": recovered, "shards": store.pending_shards(), "skipped": scan.counts(),
            "skipped_entries": [entry for entries in scan.skipped.values() for entry in entries][:100], "gallery_bn": gallery_bn,
            "bn_stats": bn_stats, "image_tta": image_tta}


def _apply_labels(labels_file: Path | None, store: IndexStore) -> dict | None:
    """Labels from ``--labels``, or else from the labels file an earlier run was given
    (so files added later get their labels too); none: the stored labels stay."""
    from ..io import file_sha256
    from .scan import label_for, read_labels

    recorded = store.meta("labels")
    if not (isinstance(recorded, dict) and isinstance(recorded.get("file"), str) and os.path.isabs(recorded["file"])):
        recorded = None  # not what a build records: forget it
    path = labels_file
    if path is None and recorded and Path(recorded["file"]).is_file():
        path = Path(recorded["file"])
    if path is None:
        return recorded
    labels, skipped = read_labels(path)
    by_id = {}
    for image_id, name in store.image_names():
        label = label_for(name, labels)
        if label is not None:
            by_id[image_id] = label
    store.set_labels(by_id)
    info = {"file": str(Path(path).resolve()), "sha256": file_sha256(path), "labelled": len(by_id), "skipped_lines": skipped[:100]}
    store.set_meta("labels", info)
    return info


def _categorize(store: IndexStore, reader: ShardReader, loaded, device: str, dtype) -> int:
    """The model's category vote for images that have none yet (new or re-encoded)."""
    import torch

    from ..retrieval.encode import gallery_categories

    locations = store.indexed_locations(uncategorised_only=True)
    for start in range(0, len(locations), CATEGORIZE_BLOCK):
        block = locations[start : start + CATEGORIZE_BLOCK]
        embeddings = torch.from_numpy(reader.gather([(shard, row) for _, shard, row in block]))
        categories = gallery_categories(loaded, embeddings, device, dtype)
        store.set_predicted_categories([(image_id, category) for (image_id, _, _), category in zip(block, categories)])
    return len(locations)


def _fingerprint(store: IndexStore, ann_config: AnnConfig, gallery_norm: str = "none", query_bank: tuple[str, float] = ("none", 0.0)) -> str:
    """Changes when the indexed set, a category or an embedding location, the ANN settings,
    the gallery normalisation or the query bank change (``none`` leaves the digest as builds
    before them wrote it)."""
    import hashlib

    settings = {key: value for key, value in vars(ann_config).items() if key != "progress"}
    if gallery_norm != "none":
        settings["gallery_norm"] = gallery_norm
    if query_bank[0] != "none":
        settings["query_bank"] = query_bank
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for image in store.indexed_images():
        digest.update(repr((image.id, image.category, image.shard, image.row)).encode())
    return digest.hexdigest()


def _category_text_queries(loaded, category: str, device: str, dtype):
    """The checkpoint's stored captions of a category, encoded: realistic queries for measuring recall."""
    from ..retrieval.encode import ZERO_SHOT_CATEGORY_TEXTS, encode_texts

    texts = ((loaded.checkpoint or {}).get("category_texts") or {}).get(category) or ZERO_SHOT_CATEGORY_TEXTS.get(category, [])
    return encode_texts(loaded, list(texts), device, dtype).numpy() if texts else None


def _indexed_mean(store: IndexStore, reader: ShardReader, categories: list[str], dim: int):
    """The mean ``[dim]`` (float32) of the embeddings FAISS indexes (those of ``categories``),
    read from the shards ``CATEGORIZE_BLOCK`` rows at a time and summed in float64."""
    import numpy as np

    total, count = np.zeros(dim, dtype=np.float64), 0
    for category in categories:
        locations = store.indexed_locations(category=category)
        for start in range(0, len(locations), CATEGORIZE_BLOCK):
            block = reader.gather([(shard, row) for _, shard, row in locations[start : start + CATEGORIZE_BLOCK]])
            total += block.astype(np.float64).sum(axis=0)
            count += len(block)
    return (total / max(count, 1)).astype(np.float32)


def _build_faiss(ann_config: AnnConfig, layout: IndexLayout, store: IndexStore, reader: ShardReader, loaded, device, dtype, previous: dict | None,
                 gallery_norm: str = "none", dim: int | None = None, query_bank: tuple[str, float] = ("none", 0.0)) -> tuple[dict, bool]:
    import numpy as np

    from ..retrieval.adapt import apply_gallery_norm, bank_offsets
    from . import faiss_index
    from ..retrieval.encode import encode_bank
    from .query_bank import write_bank_offsets

    fingerprint = _fingerprint(store, ann_config, gallery_norm, query_bank)
    old = (previous or {}).get("faiss") or {}
    categories = sorted(c for c in store.category_counts() if c != "?")
    dim = dim if dim is not None else reader.dim
    files = [entry["file"] for entry in old.get("indexes", {}).values()] + ([old["bank_offsets"]["file"]] if old.get("bank_offsets") else [])
    if (old.get("fingerprint") == fingerprint and old.get("gallery_norm", "none") == gallery_norm and old.get("query_bank", "none") == query_bank[0]
            and all((layout.root / file).is_file() for file in files)):
        if "gallery_mean" not in old:  # an index built before means were recorded: its FAISS files stand, the mean is added
            old = {**old, "gallery_norm": gallery_norm, "gallery_mean": [float(value) for value in _indexed_mean(store, reader, categories, dim)]}
        return old, False
    mean = _indexed_mean(store, reader, categories, dim)
    bank = encode_bank(loaded, device, dtype).numpy() if query_bank[0] != "none" else None
    indexes, bank_ids, offsets = {}, [], []
    for category in categories:
        locations = store.indexed_locations(category=category)
        vectors = reader.gather([(shard, row) for _, shard, row in locations])
        if gallery_norm == "center":
            vectors = apply_gallery_norm(vectors, mean)
        ids = np.array([image_id for image_id, _, _ in locations], dtype=np.int64)
        if bank is not None:  # on the vectors as FAISS holds them
            bank_ids.append(ids)
            offsets.append(bank_offsets(np.asarray(vectors, dtype=np.float32), bank, query_bank[1]))
        ann = faiss_index.build(vectors, ids, ann_config, _category_text_queries(loaded, category, device, dtype))
        relative = faiss_file_name(category, fingerprint)
        faiss_index.save(ann, layout.root / relative)
        indexes[category] = {"file": relative, **ann.describe()}
    built = {"kind": ann_config.kind, "fingerprint": fingerprint, "indexes": indexes, "gallery_norm": gallery_norm,
             "gallery_mean": [float(value) for value in mean], "query_bank": query_bank[0]}
    if bank is not None:
        concatenated = (np.concatenate(bank_ids), np.concatenate(offsets)) if bank_ids else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        built.update(query_bank_beta=query_bank[1], bank_offsets=write_bank_offsets(layout.root, fingerprint, *concatenated))
    return built, True


def _gallery_norm(settings: BuildSettings, loaded) -> str:
    """The build's gallery normalisation: the one asked for, else the checkpoint's recorded recipe's, else none."""
    from ..retrieval.queries import QueryConfig, resolve_query_config

    return resolve_query_config(QueryConfig(gallery_norm=settings.gallery_norm), getattr(loaded, "checkpoint", None)).gallery_norm


def _query_bank(settings: BuildSettings, loaded) -> tuple[str, float]:
    """The build's ``(query_bank, beta)``: the ones asked for, else the checkpoint's recorded recipe's, else none."""
    from .query_bank import resolve_query_bank

    return resolve_query_bank(settings.query_bank, settings.query_bank_beta, loaded)


def _finish(settings: BuildSettings, layout: IndexLayout, store: IndexStore, loaded, source: dict, device, dtype, prepared: dict, rank_stats: list[dict],
            context: DistributedContext, started: float) -> dict:
    from ..io import atomic_write_json
    from .shards import embedding_dim

    recovered = prepared["recovered"] + _recover_written_shards(layout, store, loaded.identity)
    labels = _apply_labels(settings.labels, store)
    dim = embedding_dim(loaded)
    reader = ShardReader(layout, dim)
    categorized = _categorize(store, reader, loaded, device, dtype)
    _remove_stale_files(layout, store)
    try:
        previous = layout.read_index_json()
    except TrafficRetrievalError:
        previous = None
    faiss_info, rebuilt = _build_faiss(settings.ann, layout, store, reader, loaded, device, dtype, previous, _gallery_norm(settings, loaded), dim,
                                       _query_bank(settings, loaded))

    states = store.state_counts()
    categories = {c: n for c, n in store.category_counts().items() if c != "?"}
    indexes = faiss_info["indexes"]
    recall = sum(entry["recall@10"] * entry["count"] for entry in indexes.values()) / max(1, sum(entry["count"] for entry in indexes.values()))
    seconds = round(time.perf_counter() - started, 3)
    info = {
        "format": INDEX_FORMAT,
        "images": store.meta("images"),
        "checkpoint": store.meta("checkpoint"),
        "identity": loaded.identity,
        "model": loaded.model_name,
        "source": source,
        "dim": dim,
        "embedding_dtype": EMBEDDING_DTYPE,
        "count": states["indexed"],
        "categories": categories,
        "unreadable": states["unreadable"],
        "pending": states["pending"],
        "kind": {c: entry["kind"] for c, entry in indexes.items()},
        "recall@10": round(recall, 4),
        "faiss": faiss_info,
        "gallery_norm": faiss_info["gallery_norm"],  # how FAISS holds the gallery (faiss.gallery_norm; the shards are raw)
        "gallery_bn": prepared["gallery_bn"],  # the BatchNorm statistics the gallery was encoded with (batchnorm.py)
        "bn_stats": prepared["bn_stats"],  # adapt with a BatchNorm tower: {file, sha256, images}; else null
        "image_tta": prepared["image_tta"],  # the test-time augmentation every image was encoded with (encoding.py)
        "query_bank": faiss_info.get("query_bank", "none"),  # how text queries are ranked (faiss.query_bank, query_bank.py)
        "labels": labels,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
        "world_size": context.world_size,
        "config": settings.describe(),
    }
    atomic_write_json(layout.index_json, info)
    referenced = {layout.root / entry["file"] for entry in indexes.values()}
    if faiss_info.get("bank_offsets"):
        referenced.add(layout.root / faiss_info["bank_offsets"]["file"])
    for pattern in ("*.index", "bank_offsets.*.safetensors"):
        for path in layout.faiss.glob(pattern) if layout.faiss.is_dir() else []:
            if path not in referenced:
                path.unlink(missing_ok=True)

    plan = prepared["plan"]
    unreadable = [f"{row.path}: {row.error}" if row.error and row.path not in row.error else row.error or row.path for row in store.unreadable()]
    report = {
        "index": str(layout.root),
        "images": info["images"],
        "files": prepared["files"],
        "count": states["indexed"],
        "encoded": sum(s["encoded"] for s in rank_stats),  # images that went through the image tower in this run
        "attempted": sum(s["images"] for s in rank_stats),  # files read in this run, readable or not
        **plan.summary(),
        "dropped": len(plan.deleted),
        "recovered": recovered,  # rows committed from shard files a killed run had written
        "categorized": categorized,
        "pending": states["pending"],
        "unreadable": len(unreadable),
        "unreadable_images": unreadable,
        "skipped": prepared["skipped"],  # gallery entries never read: not regular files, links out of the gallery, linked folders
        "skipped_entries": prepared["skipped_entries"],
        "categories": categories,
        "kind": info["kind"],
        "recall@10": info["recall@10"],
        "recall_target": settings.ann.recall_target,
        "faiss_rebuilt": rebuilt,
        "gallery_norm": faiss_info["gallery_norm"],
        "gallery_bn": prepared["gallery_bn"],
        "bn_stats": prepared["bn_stats"],
        "image_tta": prepared["image_tta"],
        "query_bank": faiss_info.get("query_bank", "none"),
        "labelled": (labels or {}).get("labelled", 0),
        "world_size": context.world_size,
        "seconds": seconds,
    }
    atomic_write_json(layout.report, report)
    return report
