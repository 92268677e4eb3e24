"""``prepare``: parse the train and val labels, split pedestrians and vehicles,
extract the vehicle vocabulary, and write training manifests and a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrafficRetrievalError
from ..io import atomic_write_json, atomic_write_jsonl
from .labels import LabelRecord, read_label_file
from .schema import CATEGORIES, VEHICLE, VEHICLE_TYPES
from .vocabulary import VehicleVocabulary, extract_vocabulary

SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class PrepareConfig:
    data: Path
    work: Path
    strict: bool = False
    vehicle_types: list[str] = field(default_factory=lambda: list(VEHICLE_TYPES))


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


def prepare(config: PrepareConfig) -> dict:
    """Run ``prepare`` and return its report (also written to WORK/prepare_report.json)."""
    data_dir, work_dir = Path(config.data), Path(config.work)
    if not data_dir.is_dir():
        raise TrafficRetrievalError(f"{data_dir}: data directory not found")
    if not label_file(data_dir, "train").is_file():
        raise TrafficRetrievalError(f"{label_file(data_dir, 'train')}: train label file not found")

    report: dict = {"data": str(data_dir.resolve()), "splits": {}, "skipped_lines": [], "missing_images": []}
    vehicle_attrs: list[str] = []
    for split in SPLITS:
        labels_path = label_file(data_dir, split)
        if not labels_path.is_file():
            report["splits"][split] = None
            continue
        records, errors, rows, missing = split_rows(data_dir, split, config.strict, config.vehicle_types)
        vehicle_attrs += [record.attr for record in records if record.category == VEHICLE]
        atomic_write_jsonl(work_dir / "manifests" / f"{split}.jsonl", rows)
        report["skipped_lines"] += [{"source": f"{e.path}:{e.line_number}", "reason": e.reason} for e in errors]
        report["missing_images"] += missing
        report["splits"][split] = {
            "label_lines": len(records) + len(errors),
            "parsed": len(records),
            "skipped_lines": len(errors),
            "missing_images": len(missing),
            "manifest_rows": len(rows),
            "per_category": {c: sum(1 for r in rows if r["category"] == c) for c in CATEGORIES},
            "distinct_attrs": {c: len({r["attr"] for r in rows if r["category"] == c}) for c in CATEGORIES},
        }
    if not report["splits"]["train"]["manifest_rows"]:
        atomic_write_json(work_dir / "prepare_report.json", report)  # the error points the user to it
        raise TrafficRetrievalError(f"{label_file(data_dir, 'train')}: no usable training records (see {work_dir / 'prepare_report.json'})")

    vocabulary = extract_vocabulary(vehicle_attrs, config.vehicle_types)
    atomic_write_json(work_dir / "vehicle_vocabulary.json", vocabulary.to_json_dict())
    report["vocabulary"] = {key: len(values) for key, values in vocabulary.to_json_dict().items()}
    atomic_write_json(work_dir / "prepare_report.json", report)
    return report


def load_vocabulary(work_dir: Path) -> VehicleVocabulary:
    return VehicleVocabulary.load(Path(work_dir) / "vehicle_vocabulary.json")


def format_report(report: dict) -> str:
    lines = [f"{'split':<6} {'lines':>7} {'used':>7} {'skipped':>8} {'missing':>8} {'pedestrian':>11} {'vehicle':>8}"]
    for split, stats in report["splits"].items():
        if stats is None:
            lines.append(f"{split:<6} (no label file)")
            continue
        lines.append(
            f"{split:<6} {stats['label_lines']:>7} {stats['manifest_rows']:>7} {stats['skipped_lines']:>8} "
            f"{stats['missing_images']:>8} {stats['per_category']['pedestrian']:>11} {stats['per_category']['vehicle']:>8}"
        )
    for skipped in report["skipped_lines"][:10]:
        lines.append(f"skipped {skipped['source']}: {skipped['reason']}")
    if len(report["skipped_lines"]) > 10:
        lines.append(f"... and {len(report['skipped_lines']) - 10} more skipped lines (see prepare_report.json)")
    for missing in report["missing_images"][:5]:
        lines.append(f"missing image {missing['image']!r} ({missing['source']})")
    if len(report["missing_images"]) > 5:
        lines.append(f"... and {len(report['missing_images']) - 5} more missing images (see prepare_report.json)")
    vocab = report.get("vocabulary", {})
    lines.append(f"vehicle vocabulary: {vocab.get('colors', 0)} colors, {vocab.get('types', 0)} types, {vocab.get('brands', 0)} brands")
    return "\n".join(lines)
