"""``index``: build or update a persistent gallery index (SQLite metadata, embedding
shards, one FAISS index per category) of a folder of images, incrementally: new and
changed files are encoded, deleted ones dropped, a killed run resumes where it stopped.
Under ``torchrun --nproc_per_node N -m traffic_retrieval index ...`` each rank
encodes a share of the shards; rank 0 merges and reports.

The model is a trained checkpoint (``--checkpoint``) or, zero-shot, any open_clip model
with its pretrained weights (``--model ViT-B-32 --pretrained laion2b_s34b_b79k|WEIGHTS.pt``,
or ``--model hf-hub:ORG/REPO``); index.json records which, and ``search``/``serve`` load it
from there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelSource, ReaderOptions, RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..options import GalleryBn, GalleryNorm, ImageTta, IndexKind, QueryBank

HELP = "build or update a persistent gallery index (SQLite + embedding shards + FAISS)"


@dataclass
class IndexConfig(RuntimeOptions, ReaderOptions, ModelSource):
    images: Path | None = option(None, help="gallery folder, walked recursively (.jpg .jpeg .png .bmp .webp)")
    checkpoint: Path | None = option(None, help="traffic-retrieval checkpoint that encodes the images (recorded in the index)")
    model: str | None = option(None, help="zero-shot, instead of --checkpoint: open_clip model name (ViT-B-32), or hf-hub:ORG/REPO "
                                          "(recorded in the index)")
    pretrained: str | None = option(None, help="with --model NAME: open_clip pretrained tag or weights file (recorded in the index, "
                                               "a file by its sha256)")
    out: Path | None = option(None, help="index folder (created, or updated incrementally)")
    labels: Path | None = option(None, help="optional IMAGE$ATTR$TEXT file: labels and true categories of gallery images")
    kind: IndexKind = option("auto", help="FAISS index: auto (flat when small, else hnsw), flat (exact), hnsw, ivf, "
                                          "ivfpq (compressed: 0.3x the memory, approximate scores)")
    flat_max: int = option(100_000, minimum=0, help="--kind auto: exact search up to this many images per category, HNSW above")
    recall_target: float = option(0.95, positive=True, maximum=1, help="recall@10 the approximate search is tuned to")
    reduce_dim: int = option(128, minimum=0, help="hnsw: build the graph on this many principal directions and re-score candidates exactly "
                                                  "(0: full vectors; falls back to full vectors when the recall target is missed)")
    shard_size: int = option(4096, minimum=1, help="images per embedding shard, the unit of resumption")
    gallery_norm: GalleryNorm | None = option(None, help="how the FAISS indexes hold the gallery: none, or center (centred on the gallery's mean "
                                                         "embedding, re-normalised; search and serve then rank as predict --gallery-norm center); "
                                                         "unset: the checkpoint's recorded recipe, else none. The shards keep raw embeddings: "
                                                         "changing it rebuilds only the FAISS indexes")
    gallery_bn: GalleryBn | None = option(None, help="the image tower's BatchNorm statistics: none (the training images'), or adapt (re-estimated "
                                                     "on a sample of this gallery, AdaBN, and kept in the index for later updates and image queries); "
                                                     "unset: the checkpoint's recorded recipe, else none. Fixed for the index's life")
    image_tta: ImageTta | None = option(None, help="test-time handling of every image: none, flip (the mean of the image's and its mirror's "
                                                   "embeddings; twice the encoding time), exposure (an under-exposed night frame brightened "
                                                   "to middle grey first, hues kept) or flip+exposure; image queries are then encoded the same way; "
                                                   "unset: the checkpoint's recorded recipe, else none. Fixed for the index's life")
    query_bank: QueryBank | None = option(None, help="how text queries are ranked: none (cosine), or captions (querybank normalisation: each "
                                                     "image's score lowered by its soft-max similarity to the training captions the checkpoint "
                                                     "stores; the offsets are computed here and kept in the index); unset: the checkpoint's "
                                                     "recorded recipe, else none. Changing it rebuilds only the FAISS indexes")
    query_bank_beta: float | None = option(None, minimum=1e-3, maximum=1000, metavar="BETA",
                                           help="--query-bank captions: the inverted softmax's inverse temperature; unset: the recipe's, else 10")
    json: bool = option(False, help="print the whole report as JSON")


Config = IndexConfig


def run(config: IndexConfig) -> dict:
    """Build or update the index; the build report (under torchrun, ranks other than 0
    return only their encoding counts and ``rank``)."""
    from ..config import checked
    from ..index.build import build_index
    from ..index.faiss_index import AnnConfig

    config = checked(config)
    for key in ("images", "out"):
        if getattr(config, key) is None:
            raise TrafficRetrievalError(f"index needs --{key}")
    ann = AnnConfig(kind=config.kind, flat_max=config.flat_max, recall_target=config.recall_target, reduce_dim=config.reduce_dim, progress=config.progress)
    return build_index(config.images, config.checkpoint, config.out, labels=config.labels, ann=ann, shard_size=config.shard_size,
                       batch_size=config.batch_size, workers=config.workers, device=config.device, precision=config.precision, progress=config.progress,
                       trust_checkpoint=config.trust_checkpoint, model=config.model, pretrained=config.pretrained, gallery_norm=config.gallery_norm,
                       gallery_bn=config.gallery_bn, image_tta=config.image_tta, query_bank=config.query_bank,
                       query_bank_beta=config.query_bank_beta)


def format_report(report: dict) -> str:
    """The few lines ``index`` prints."""
    lines = [
        f"indexed {report['count']} images ({', '.join(f'{n} {c}' for c, n in report['categories'].items()) or 'none'}) in {report['index']}",
        f"this run: encoded {report['encoded']} (new {report['new']}, changed {report['changed']}, resumed {report['resumed']}), "
        f"unchanged {report['unchanged']}, dropped {report['dropped']}, {report['seconds']:.1f} s",
        "faiss: " + (", ".join(f"{c} {k}" for c, k in report["kind"].items()) or "empty") + f", recall@10 {report['recall@10']:.3f}"
        + (" (rebuilt)" if report["faiss_rebuilt"] else " (unchanged)")
        + (f", gallery norm {report['gallery_norm']}" if report.get("gallery_norm", "none") != "none" else "")
        + (f", BatchNorm statistics of {report['bn_stats']['images']} gallery images" if report.get("bn_stats") else "")
        + (f", image TTA {report['image_tta']}" if report.get("image_tta", "none") != "none" else "")
        + (f", query bank {report['query_bank']}" if report.get("query_bank", "none") != "none" else ""),
    ]
    if report["recall@10"] < report.get("recall_target", 0):
        lines.append(f"warning: recall@10 {report['recall@10']:.3f} is under the target {report['recall_target']}: "
                     "the widest search of this kind cannot reach it; try --kind hnsw or --kind flat")
    if report["pending"]:
        lines.append(f"{report['pending']} images are still pending: run index again to finish")
    skipped = report.get("skipped") or {}
    if any(skipped.values()):
        kinds = {"not_regular": "not regular files", "outside_gallery": "links out of the gallery", "linked_folders": "linked folders"}
        lines.append(f"skipped {sum(skipped.values())} gallery entries, never read: "
                     + ", ".join(f"{count} {kinds.get(kind, kind)}" for kind, count in skipped.items() if count)
                     + f" (see {Path(report['index']) / 'build_report.json'})")
    for message in report["unreadable_images"][:10]:
        lines.append(f"unreadable image: {message}")
    if report["unreadable"] > 10:
        lines.append(f"... {report['unreadable'] - 10} more unreadable images (see {Path(report['index']) / 'build_report.json'})")
    return "\n".join(lines)


def print_result(report: dict, config: IndexConfig) -> None:
    if "rank" in report:  # torchrun: rank 0 reports
        return
    print(json.dumps(report, indent=2) if config.json else format_report(report))
