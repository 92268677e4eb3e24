"""``augment``: attribute augmentation of vehicle captions (docs/method.md, the seed's step 3).

Vehicle labels state only some fields: ``white Audi.`` has no type, ``Truck.`` no
color or brand. For each such image every caption that fills the missing fields
from the vehicle vocabulary (known fields fixed) is scored against the image with
a CLIP model - zero-shot (``--model/--pretrained``) or a trained checkpoint
(self-enhancement) - and the best becomes the training caption (the stages are in
``train/attribute_augment.py``); this job does the file and model I/O around them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelSource, ReaderOptions, RuntimeOptions, option
from ..errors import TrafficRetrievalError

HELP = "attribute augmentation: complete vehicle captions with the best-scoring missing fields"
REPORT_NAME = "augment_report.json"


@dataclass
class AugmentCaptionsConfig(ModelSource, RuntimeOptions, ReaderOptions):
    work: Path | None = option(None, help="prepare output directory (manifests, vehicle_vocabulary.json)")
    manifest: str = option("train", help="input manifest name under WORK/manifests")
    out_manifest: str = option("train_augmented", help="output manifest name")
    keep_original: bool = option(False, help="also keep the original caption as a training pair")


Config = AugmentCaptionsConfig


def _check_config(config: AugmentCaptionsConfig) -> Path:
    if config.work is None:
        raise TrafficRetrievalError("augment needs --work DIR (the prepare output)")
    for key in ("manifest", "out_manifest"):
        name = getattr(config, key)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise TrafficRetrievalError(f"{key} must be a manifest name under WORK/manifests (no path), got {name!r}")
    if config.manifest == config.out_manifest:
        raise TrafficRetrievalError(f"out_manifest must differ from manifest ({config.manifest!r}); augment never overwrites its input")
    if config.checkpoint and config.model:
        raise TrafficRetrievalError("give either --checkpoint (self-enhancement) or --model/--pretrained (zero-shot), not both")
    if config.pretrained and not config.model:
        raise TrafficRetrievalError("--pretrained needs --model (the open_clip architecture name)")
    if not config.checkpoint and not config.model:
        raise TrafficRetrievalError("augment needs --checkpoint (a trained model) or --model/--pretrained (zero-shot CLIP)")
    return Path(config.work)


def _read_manifest(path: Path) -> list[dict]:
    from ..io import read_jsonl

    if not path.is_file():
        raise TrafficRetrievalError(f"{path}: manifest not found (run `prepare` first)")
    rows = read_jsonl(path)
    for line_number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or any(not isinstance(row.get(key), str) for key in ("image", "category", "attr", "text")):
            raise TrafficRetrievalError(f"{path}:{line_number}: manifest row needs string keys image, category, attr, text")
    return rows


def _encode_captions(loaded, captions: list[str], device: str, dtype, progress: bool, chunk: int = 4096):
    import torch
    from tqdm import tqdm

    from ..retrieval.encode import encode_texts

    parts = []
    with tqdm(total=len(captions), desc="encode captions", unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(captions), chunk):
            parts.append(encode_texts(loaded, captions[start : start + chunk], device, dtype))
            bar.update(len(captions[start : start + chunk]))
    return torch.cat(parts) if parts else torch.zeros((0, 1))


def run(config: AugmentCaptionsConfig) -> dict:
    """Run ``augment``; returns the report (also written to WORK/augment_report.json)."""
    from ..config import config_to_dict
    from ..data.vocabulary import VehicleVocabulary
    from ..io import atomic_write_json, atomic_write_jsonl
    from ..train.attribute_augment import apply_choices, choose_captions, margin_summary, pick_examples, plan_augmentation

    started = time.perf_counter()
    work = _check_config(config)
    manifest_path = work / "manifests" / f"{config.manifest}.jsonl"
    out_path = work / "manifests" / f"{config.out_manifest}.jsonl"
    rows = _read_manifest(manifest_path)
    vocabulary = VehicleVocabulary.load(work / "vehicle_vocabulary.json")
    plan = plan_augmentation(rows, vocabulary)
    seconds: dict[str, float] = {"plan": time.perf_counter() - started}

    choices: dict[int, int] = {}
    margins: dict[int, float] = {}
    errors: list[str] = []
    model_identity = None
    if plan.groups:
        from ..retrieval.encode import encode_image_files
        from ..runtime import resolve_runtime
        from .predict import load_model_for_inference

        runtime = resolve_runtime(config.device, config.precision)
        device, dtype = runtime.device, runtime.dtype
        loaded = load_model_for_inference(config.checkpoint, config.model, config.pretrained, device, config.trust_checkpoint)
        model_identity = loaded.identity
        tick = time.perf_counter()
        text_embeddings = _encode_captions(loaded, plan.captions, device, dtype, config.progress)
        seconds["encode_captions"] = time.perf_counter() - tick
        tick = time.perf_counter()
        encoding = encode_image_files(loaded, plan.images, device, dtype, config.batch_size, config.workers, config.progress, description="encode vehicles")
        errors = encoding.errors
        seconds["encode_images"] = time.perf_counter() - tick
        tick = time.perf_counter()
        choices, margins = choose_captions(plan, encoding.embeddings, encoding.readable, text_embeddings, device, progress=config.progress)
        seconds["score"] = time.perf_counter() - tick

    out_rows = apply_choices(rows, plan, choices, config.keep_original)
    atomic_write_jsonl(out_path, out_rows)
    changed = sum(1 for row in out_rows if "augmented_from" in row and row["text"] != row["augmented_from"])
    unreadable_rows = sum(len(group.rows) for group in plan.groups) - len(choices)
    seconds["total"] = time.perf_counter() - started
    report = {
        "manifest": str(manifest_path),
        "out_manifest": str(out_path),
        "model": model_identity,
        "rows_in": len(rows),
        "rows_out": len(out_rows),
        "vehicle_rows": plan.vehicle_rows,
        "complete_vehicle_rows": plan.complete_rows,
        "augmented": len(choices),
        "captions_changed": changed,
        "unreadable": unreadable_rows,
        "unreadable_errors": errors[:10],
        "unfillable": plan.unfillable_rows,
        "missing_patterns": dict(sorted(plan.patterns.items())),
        "candidate_captions": len(plan.captions),
        "images_encoded": len(plan.images),
        "score_margin": margin_summary(list(margins.values())),
        "examples": pick_examples(rows, plan, choices),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "config": config_to_dict(config),
    }
    atomic_write_json(work / REPORT_NAME, report)
    return report


def format_report(report: dict) -> str:
    """A short human-readable summary."""
    lines = [
        f"rows: {report['rows_in']} in, {report['rows_out']} out ({report['out_manifest']})",
        f"vehicles: {report['vehicle_rows']} ({report['complete_vehicle_rows']} complete), augmented {report['augmented']}, "
        f"captions changed {report['captions_changed']}, unreadable {report['unreadable']}",
        "missing fields: " + (", ".join(f"{pattern} {count}" for pattern, count in report["missing_patterns"].items()) or "none"),
        f"candidate captions encoded: {report['candidate_captions']}, images encoded: {report['images_encoded']}",
    ]
    margin = report.get("score_margin")
    if margin:
        lines.append(f"winner margin over runner-up: mean {margin['mean']:.4f}, median {margin['median']:.4f}, min {margin['min']:.4f}")
    for example in report["examples"]:
        lines.append(f"  {example['original']!r} -> {example['augmented']!r}")
    for error in report["unreadable_errors"][:5]:
        lines.append(f"unreadable: {error}")
    return "\n".join(lines)


def print_result(report: dict, config: AugmentCaptionsConfig) -> None:
    print(format_report(report))
