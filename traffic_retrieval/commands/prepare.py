"""``prepare``: parse the train and val labels (and the camera-domain val split,
DATA/val_camera, where present), split pedestrians and vehicles, extract the vehicle
vocabulary (from train and val), and write manifests and a report
(``WORK/manifests/*.jsonl``, ``WORK/vehicle_vocabulary.json``, ``WORK/prepare_report.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import option
from ..data.schema import VEHICLE_TYPES

HELP = "parse labels, split categories, extract the vehicle vocabulary, write manifests"


@dataclass
class PrepareConfig:
    data: Path | None = option(None, help="dataset root in the challenge layout")
    work: Path | None = option(None, help="output directory")
    strict: bool = option(False, help="stop at the first bad line instead of skipping and counting")
    vehicle_types: list[str] = option(default_factory=lambda: list(VEHICLE_TYPES), metavar="TYPE",
                                      help="vehicle types, comma- or space-separated (default: the challenge's six)")

    def __post_init__(self):
        self.vehicle_types = [name.strip() for item in self.vehicle_types for name in str(item).split(",") if name.strip()]


Config = PrepareConfig


def run(config: PrepareConfig) -> dict:
    """Write the manifests, the vocabulary and the report; return the report."""
    from ..data.prepare import label_file
    from ..errors import TrafficRetrievalError
    from ..io import folder_lock

    if config.data is None or config.work is None:
        raise TrafficRetrievalError("prepare needs --data DIR and --work DIR")
    data_dir, work_dir = Path(config.data), Path(config.work)
    if not data_dir.is_dir():
        raise TrafficRetrievalError(f"{data_dir}: data directory not found")
    if not label_file(data_dir, "train").is_file():
        raise TrafficRetrievalError(f"{label_file(data_dir, 'train')}: train label file not found")
    with folder_lock(work_dir, "prepare"):  # one prepare per WORK folder
        return _write_outputs(config, data_dir, work_dir)


def _write_outputs(config: PrepareConfig, data_dir: Path, work_dir: Path) -> dict:
    from ..data.prepare import CAMERA_VAL_SPLIT, SPLITS, images_in_test_gallery, label_file, split_rows
    from ..data.schema import CATEGORIES, VEHICLE
    from ..data.vocabulary import extract_vocabulary
    from ..errors import TrafficRetrievalError
    from ..io import atomic_write_json, atomic_write_jsonl

    report: dict = {"data": str(data_dir.resolve()), "splits": {}, "skipped_lines": [], "missing_images": []}
    vehicle_attrs: list[str] = []
    for split in SPLITS:
        labels_path = label_file(data_dir, split)
        if not labels_path.is_file():
            report["splits"][split] = None
            # an earlier prepare's manifest of a split the data no longer has would still be validated on
            (work_dir / "manifests" / f"{split}.jsonl").unlink(missing_ok=True)
            continue
        records, errors, rows, missing = split_rows(data_dir, split, config.strict, config.vehicle_types)
        if split != CAMERA_VAL_SPLIT:  # the camera val split only chooses checkpoints: nothing is learnt from it
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
        if split == CAMERA_VAL_SPLIT:
            report["splits"][split]["in_test_gallery"] = images_in_test_gallery(data_dir, rows)
    if not report["splits"]["train"]["manifest_rows"]:
        atomic_write_json(work_dir / "prepare_report.json", report)  # the error points the user to it
        raise TrafficRetrievalError(f"{label_file(data_dir, 'train')}: no usable training records (see {work_dir / 'prepare_report.json'})")

    vocabulary = extract_vocabulary(vehicle_attrs, config.vehicle_types)
    atomic_write_json(work_dir / "vehicle_vocabulary.json", vocabulary.to_json_dict())
    report["vocabulary"] = {key: len(values) for key, values in vocabulary.to_json_dict().items()}
    atomic_write_json(work_dir / "prepare_report.json", report)
    return report


def format_report(report: dict) -> str:
    """The report for a terminal: values from the label file shortened, control characters escaped."""
    from ..errors import printable

    lines = [f"{'split':<10} {'lines':>7} {'used':>7} {'skipped':>8} {'missing':>8} {'pedestrian':>11} {'vehicle':>8}"]
    for split, stats in report["splits"].items():
        if stats is None:
            lines.append(f"{split:<10} (no label file)")
            continue
        lines.append(
            f"{split:<10} {stats['label_lines']:>7} {stats['manifest_rows']:>7} {stats['skipped_lines']:>8} "
            f"{stats['missing_images']:>8} {stats['per_category']['pedestrian']:>11} {stats['per_category']['vehicle']:>8}"
        )
    for split, stats in report["splits"].items():
        if stats and stats.get("in_test_gallery"):
            names = ", ".join(printable(name, 40) for name in stats["in_test_gallery"][:3])
            lines.append(f"warning: {len(stats['in_test_gallery'])} {split} images are also in test/test_images ({names}"
                         f"{', ...' if len(stats['in_test_gallery']) > 3 else ''}): choosing checkpoints on them leaks the test")
    for skipped in report["skipped_lines"][:10]:
        lines.append(f"skipped {printable(skipped['source'])}: {printable(skipped['reason'], 200)}")
    if len(report["skipped_lines"]) > 10:
        lines.append(f"... and {len(report['skipped_lines']) - 10} more skipped lines (see prepare_report.json)")
    for missing in report["missing_images"][:5]:
        name = missing["image"] if len(missing["image"]) <= 80 else missing["image"][:80] + "…"
        lines.append(f"missing image {name!r} ({printable(missing['source'])})")
    if len(report["missing_images"]) > 5:
        lines.append(f"... and {len(report['missing_images']) - 5} more missing images (see prepare_report.json)")
    vocab = report.get("vocabulary", {})
    lines.append(f"vehicle vocabulary: {vocab.get('colors', 0)} colors, {vocab.get('types', 0)} types, {vocab.get('brands', 0)} brands")
    return "\n".join(lines)


def print_result(report: dict, config: PrepareConfig) -> None:
    work = Path(config.work)
    print(format_report(report))
    print(f"wrote {work / 'manifests'}, {work / 'vehicle_vocabulary.json'}, {work / 'prepare_report.json'}")
