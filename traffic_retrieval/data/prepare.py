"""Reading a dataset in the challenge layout: label files, image files and manifest
rows per split (the ``prepare`` job, ``commands/prepare.py``, writes them out).

``val_camera`` is an optional second val split of target-domain (surveillance camera)
crops in the val format, used only to choose checkpoints and stages, never trained on
(docs/data-format.md)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from .labels import LabelRecord, read_label_file
from .schema import VEHICLE_TYPES
from .vocabulary import VehicleVocabulary

CAMERA_VAL_SPLIT = "val_camera"
SPLITS = ("train", "val", CAMERA_VAL_SPLIT)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def label_file(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / split / f"{split}_label.txt"


def image_dir(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / split / f"{split}_images"


def resolve_image(images_dir: Path, image_name: str, files_in_dir: set[str]) -> Path | None:
    """The file an image name refers to; real pedestrian labels omit the ``.jpg``."""
    if image_name in files_in_dir:
        return images_dir / image_name
    if Path(image_name).suffix.lower() not in IMAGE_SUFFIXES:
        for suffix in IMAGE_SUFFIXES:
            if image_name + suffix in files_in_dir:
                return images_dir / (image_name + suffix)
    return None


def manifest_row(record: LabelRecord, image_path: Path) -> dict:
    return {
        "image": str(image_path.resolve()),
        "name": record.image_name,
        "category": record.category,
        "attr": record.attr,
        "text": record.text,
        "source": record.source,
    }


def split_rows(data_dir: Path, split: str, strict: bool = False, vehicle_types=VEHICLE_TYPES):
    """Parse one split's labels and resolve its images.

    Returns ``(records, skipped line errors, manifest rows, missing images)``.
    """
    labels_path = label_file(data_dir, split)
    records, errors = read_label_file(labels_path, strict=strict, vehicle_types=vehicle_types)
    images_dir = image_dir(data_dir, split)
    files_in_dir = {p.name for p in images_dir.iterdir()} if images_dir.is_dir() else set()
    rows, missing = [], []
    for record in records:
        image_path = resolve_image(images_dir, record.image_name, files_in_dir)
        if image_path is None:
            if strict:
                raise TrafficRetrievalError(f"{record.source}: image {record.image_name!r} not found in {images_dir}")
            missing.append({"source": record.source, "image": record.image_name})
            continue
        rows.append(manifest_row(record, image_path))
    return records, errors, rows, missing


def images_in_test_gallery(data_dir: Path, rows: list[dict]) -> list[str]:
    """The names of the ``rows``' images whose bytes equal a file of DATA/test/test_images (a
    validation image that is also a test image); only files of equal size are read."""
    import hashlib

    gallery_dir = image_dir(data_dir, "test")
    if not rows or not gallery_dir.is_dir():
        return []

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    by_size: dict[int, list[dict]] = {}
    for row in rows:
        by_size.setdefault(Path(row["image"]).stat().st_size, []).append(row)
    gallery_digests = {digest(entry) for entry in gallery_dir.iterdir() if entry.is_file() and entry.stat().st_size in by_size}
    return [row["name"] for size_rows in by_size.values() for row in size_rows if digest(Path(row["image"])) in gallery_digests]


def load_vocabulary(work_dir: Path) -> VehicleVocabulary:
    return VehicleVocabulary.load(Path(work_dir) / "vehicle_vocabulary.json")
