"""Reading a dataset in the challenge layout: label files, image files and manifest
rows per split (the ``prepare`` job, ``commands/prepare.py``, writes them out)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrafficRetrievalError
from .labels import LabelRecord, read_label_file
from .schema import VEHICLE_TYPES
from .vocabulary import VehicleVocabulary

SPLITS = ("train", "val")
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


def load_vocabulary(work_dir: Path) -> VehicleVocabulary:
    return VehicleVocabulary.load(Path(work_dir) / "vehicle_vocabulary.json")
