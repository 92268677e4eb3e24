"""``augment``: attribute augmentation of vehicle captions (docs/method.md, the seed's step 3).

Vehicle labels state only some fields: ``white Audi.`` has no type, ``Truck.`` no
color or brand. For each such image every caption that fills the missing fields
from the vehicle vocabulary (known fields fixed) is scored against the image with
a CLIP model - zero-shot (``--model/--pretrained``) or a trained checkpoint
(self-enhancement) - and the best becomes the training caption (the stages are in
``train/attribute_augment.py``); this job does the file and model I/O around them.

``--caption-form sentence`` keeps the label's frame (``This is a white Audi Sedan.``);
``bare`` is the seed's (``white Audi Sedan``). The seed also used ``--resize-mode crop``
and, on CUDA, ``--precision fp16``.

``--dry-run --candidates-out FILE.jsonl`` loads no model and reads no image: it writes,
per vehicle label, the exact candidate strings a real run would score, from the
prepare output (``--work``) or straight from a challenge label file (``--labels``,
``IMAGE$ATTR$TEXT``, or the seed's ``IMAGE$ATTR$TEXT$AUGMENTED``, whose 4th field is
reported as ``seed_choice``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import ModelSource, ReaderOptions, RuntimeOptions, option
from ..errors import TrafficRetrievalError
from ..options import CaptionForm, ResizeMode

HELP = "attribute augmentation: complete vehicle captions with the best-scoring missing fields"
REPORT_NAME = "augment_report.json"


@dataclass
class AugmentCaptionsConfig(ModelSource, RuntimeOptions, ReaderOptions):
    work: Path | None = option(None, help="prepare output directory (manifests, vehicle_vocabulary.json)")
    manifest: str = option("train", help="input manifest name under WORK/manifests")
    out_manifest: str = option("train_augmented", help="output manifest name")
    keep_original: bool = option(False, help="also keep the original caption as a training pair")
    caption_form: CaptionForm = option("sentence", help="candidate and output captions: sentence keeps the label's frame "
                                                        "('This is a white Audi Sedan.'); bare is the seed's ('white Audi Sedan')")
    resize_mode: ResizeMode | None = option(None, help="how images become squares for scoring; unset: the model's or checkpoint's own "
                                                       "(the seed augmented with crop)")
    dry_run: bool = option(False, help="no model, no images: write the candidates each vehicle label would get to --candidates-out")
    candidates_out: Path | None = option(None, help="JSON lines, one per vehicle label: image, attr, text, candidates "
                                                    "(a real run adds chosen); needed with --dry-run")
    labels: Path | None = option(None, help="dry run: a challenge label file IMAGE$ATTR$TEXT (a 4th field, the seed's choice, is "
                                            "reported) instead of --work")
    vocabulary: Path | None = option(None, help="with --labels: vehicle vocabulary JSON (colors/types/brands); unset: the published "
                                                "one plus the file's own")


Config = AugmentCaptionsConfig


def _check_manifest_names(config: AugmentCaptionsConfig) -> None:
    for key in ("manifest", "out_manifest"):
        name = getattr(config, key)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise TrafficRetrievalError(f"{key} must be a manifest name under WORK/manifests (no path), got {name!r}")
    if config.manifest == config.out_manifest:
        raise TrafficRetrievalError(f"out_manifest must differ from manifest ({config.manifest!r}); augment never overwrites its input")


def _check_config(config: AugmentCaptionsConfig) -> None:
    if config.vocabulary is not None and config.labels is None:
        raise TrafficRetrievalError("--vocabulary goes with --labels; with --work the vocabulary is WORK/vehicle_vocabulary.json")
    if config.dry_run:
        if config.candidates_out is None:
            raise TrafficRetrievalError("--dry-run needs --candidates-out FILE.jsonl (where the candidates go)")
        if (config.work is None) == (config.labels is None):
            raise TrafficRetrievalError("--dry-run reads exactly one of --work DIR (the prepare output) or --labels FILE (a challenge label file)")
        if config.work is not None:
            _check_manifest_names(config)
        return
    if config.labels is not None:
        raise TrafficRetrievalError("--labels is for --dry-run; a real run reads --work DIR (the prepare output)")
    if config.work is None:
        raise TrafficRetrievalError("augment needs --work DIR (the prepare output)")
    _check_manifest_names(config)
    if config.checkpoint and config.model:
        raise TrafficRetrievalError("give either --checkpoint (self-enhancement) or --model/--pretrained (zero-shot), not both")
    if config.pretrained and not config.model:
        raise TrafficRetrievalError("--pretrained needs --model (the open_clip architecture name)")
    if not config.checkpoint and not config.model:
        raise TrafficRetrievalError("augment needs --checkpoint (a trained model) or --model/--pretrained (zero-shot CLIP)")


def _read_manifest(path: Path) -> list[dict]:
    from ..io import read_jsonl

    if not path.is_file():
        raise TrafficRetrievalError(f"{path}: manifest not found (run `prepare` first)")
    rows = read_jsonl(path)
    for line_number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or any(not isinstance(row.get(key), str) for key in ("image", "category", "attr", "text")):
            raise TrafficRetrievalError(f"{path}:{line_number}: manifest row needs string keys image, category, attr, text")
    return rows


def read_label_rows(path: Path, vehicle_types: Sequence[str]) -> tuple[list[dict], list[str]]:
    """The label file as manifest-like rows (``image``, ``category``, ``attr``, ``text`` and,
    from a 4th field, ``seed_choice``) plus the one-line errors of the lines skipped
    (the project's parser, ``data/labels.read_label_file``, duplicate image names included)."""
    from ..data.labels import read_label_file

    records, errors = read_label_file(path, vehicle_types=vehicle_types, allow_augmented=True)
    if errors and not records:
        raise TrafficRetrievalError(f"{path}: no usable label lines ({len(errors)} bad; first: {errors[0]})")
    rows = []
    for record in records:
        row = {"image": record.image_name, "category": record.category, "attr": record.attr, "text": record.text}
        if record.augmented is not None:
            row["seed_choice"] = record.augmented
        rows.append(row)
    return rows, [str(error) for error in errors]


def _labels_vocabulary(config: AugmentCaptionsConfig):
    """(vocabulary, rows, bad-line errors, where the vocabulary came from) for ``--labels``."""
    from ..data.schema import VEHICLE
    from ..data.vocabulary import VehicleVocabulary
    from ..train.attribute_augment import vocabulary_with_labels

    given = VehicleVocabulary.load(config.vocabulary) if config.vocabulary is not None else None
    base = given if given is not None else VehicleVocabulary.published()
    rows, errors = read_label_rows(Path(config.labels), base.types)
    if given is not None:
        return given, rows, errors, str(config.vocabulary)
    merged = vocabulary_with_labels(base, (row["attr"] for row in rows if row["category"] == VEHICLE))
    return merged, rows, errors, "published + label file"


def _candidates_summary(lines: list[dict]) -> dict:
    """Counts over the ``--candidates-out`` lines, with the seed's hit rate where it is known."""
    from ..train.attribute_augment import COMPLETE, UNFILLABLE

    seeded = [line for line in lines if "seed_choice" in line]
    hits = sum(line["seed_choice_among_candidates"] for line in seeded)
    return {
        "vehicles": len(lines),
        "candidates": sum(len(line["candidates"]) for line in lines),
        "complete": sum(line.get("reason") == COMPLETE for line in lines),
        "unfillable": sum(line.get("reason") == UNFILLABLE for line in lines),
        "seed_choice": {"lines": len(seeded), "among_candidates": hits, "rate": hits / len(seeded)} if seeded else None,
    }


def _dry_run(config: AugmentCaptionsConfig, started: float) -> dict:
    """Plan without a model: the candidates of every vehicle label, written to ``--candidates-out``."""
    from ..config import config_to_dict
    from ..data.vocabulary import VehicleVocabulary
    from ..io import atomic_write_jsonl
    from ..train.attribute_augment import candidate_lines, plan_augmentation

    bad_lines: list[str] = []
    if config.labels is not None:
        vocabulary, rows, bad_lines, vocabulary_source = _labels_vocabulary(config)
        source = str(config.labels)
    else:
        work = Path(config.work)
        manifest_path = work / "manifests" / f"{config.manifest}.jsonl"
        rows = _read_manifest(manifest_path)
        vocabulary_path = work / "vehicle_vocabulary.json"
        vocabulary, vocabulary_source, source = VehicleVocabulary.load(vocabulary_path), str(vocabulary_path), str(manifest_path)
    plan = plan_augmentation(rows, vocabulary, config.caption_form)
    lines = list(candidate_lines(rows, plan))
    atomic_write_jsonl(config.candidates_out, lines)
    summary = _candidates_summary(lines)
    return {
        "dry_run": True,
        "source": source,
        "candidates_out": str(config.candidates_out),
        "caption_form": config.caption_form,
        "lines": len(rows) + len(bad_lines),
        **summary,
        "distinct_candidates": len(plan.captions),
        "pedestrians_skipped": len(rows) - summary["vehicles"],
        "bad_lines": len(bad_lines),
        "bad_line_errors": bad_lines[:10],
        "missing_patterns": dict(sorted(plan.patterns.items())),
        "vocabulary": {"source": vocabulary_source, "colors": len(vocabulary.colors), "types": len(vocabulary.types),
                       "brands": len(vocabulary.brands)},
        "seconds": {"total": round(time.perf_counter() - started, 3)},
        "config": config_to_dict(config),
    }


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
    """Run ``augment``; returns the report (a real run also writes it to WORK/augment_report.json).

    With ``dry_run`` nothing but the candidates file is written and no model is loaded
    (torch is not imported).
    """
    started = time.perf_counter()
    _check_config(config)
    if config.dry_run:
        return _dry_run(config, started)

    from ..config import config_to_dict
    from ..data.vocabulary import VehicleVocabulary
    from ..io import atomic_write_json, atomic_write_jsonl
    from ..train.attribute_augment import apply_choices, candidate_lines, choose_captions, margin_summary, pick_examples, plan_augmentation

    work = Path(config.work)
    manifest_path = work / "manifests" / f"{config.manifest}.jsonl"
    out_path = work / "manifests" / f"{config.out_manifest}.jsonl"
    rows = _read_manifest(manifest_path)
    vocabulary = VehicleVocabulary.load(work / "vehicle_vocabulary.json")
    plan = plan_augmentation(rows, vocabulary, config.caption_form)
    seconds: dict[str, float] = {"plan": time.perf_counter() - started}

    choices: dict[int, int] = {}
    margins: dict[int, float] = {}
    errors: list[str] = []
    model_identity = resize_mode = autocast = None
    if plan.groups:
        import dataclasses

        from ..model.factory import set_preprocess
        from ..retrieval.encode import encode_image_files
        from ..runtime import resolve_runtime
        from .predict import load_model_for_inference

        runtime = resolve_runtime(config.device, config.precision)
        device, dtype = runtime.device, runtime.dtype
        loaded = load_model_for_inference(config.checkpoint, config.model, config.pretrained, device, config.trust_checkpoint)
        if config.resize_mode is not None:
            set_preprocess(loaded, dataclasses.replace(loaded.preprocess, resize_mode=config.resize_mode))
        model_identity, resize_mode = loaded.identity, loaded.preprocess.resize_mode
        autocast = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), str(dtype)) if dtype is not None else "fp32"
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
    candidates = None
    if config.candidates_out is not None:
        lines = list(candidate_lines(rows, plan, choices))
        atomic_write_jsonl(config.candidates_out, lines)
        candidates = {"path": str(config.candidates_out), **_candidates_summary(lines)}
    changed = sum(1 for row in out_rows if "augmented_from" in row and row["text"] != row["augmented_from"])
    unreadable_rows = sum(len(group.rows) for group in plan.groups) - len(choices)
    seconds["total"] = time.perf_counter() - started
    report = {
        "manifest": str(manifest_path),
        "out_manifest": str(out_path),
        "model": model_identity,
        "caption_form": config.caption_form,
        "resize_mode": resize_mode,
        "autocast": autocast,
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
        "candidates_out": candidates,
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
        f"candidate captions encoded: {report['candidate_captions']} ({report['caption_form']}), images encoded: {report['images_encoded']}"
        + (f" (resize {report['resize_mode']}, autocast {report['autocast']})" if report.get("resize_mode") else ""),
    ]
    margin = report.get("score_margin")
    if margin:
        lines.append(f"winner margin over runner-up: mean {margin['mean']:.4f}, median {margin['median']:.4f}, min {margin['min']:.4f}")
    for example in report["examples"]:
        lines.append(f"  {example['original']!r} -> {example['augmented']!r}")
    for error in report["unreadable_errors"][:5]:
        lines.append(f"unreadable: {error}")
    if report.get("candidates_out"):
        lines.append(f"candidates: {report['candidates_out']['path']}" + _seed_rate_text(report["candidates_out"].get("seed_choice")))
    return "\n".join(lines)


def _seed_rate_text(seed_choice: dict | None) -> str:
    if not seed_choice:
        return ""
    return f", seed choice among candidates {seed_choice['among_candidates']}/{seed_choice['lines']} ({100 * seed_choice['rate']:.2f}%)"


def format_dry_run(report: dict) -> str:
    """The dry run's one-line summary, then any skipped label lines."""
    summary = (f"dry run ({report['caption_form']}): {report['lines']} lines, {report['vehicles']} vehicles, "
               f"{report['candidates']} candidates ({report['distinct_candidates']} distinct), "
               f"{report['pedestrians_skipped']} pedestrians skipped, {report['complete']} complete, {report['unfillable']} unfillable"
               + (f", {report['bad_lines']} bad lines skipped" if report["bad_lines"] else "")
               + _seed_rate_text(report["seed_choice"]) + f" -> {report['candidates_out']}")
    return "\n".join([summary, *(f"skipped: {error}" for error in report["bad_line_errors"][:5])])


def print_result(report: dict, config: AugmentCaptionsConfig) -> None:
    print(format_dry_run(report) if report.get("dry_run") else format_report(report))
