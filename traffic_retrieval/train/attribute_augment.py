"""``augment``: attribute augmentation of vehicle captions (METHOD.md, seed step 3).

Vehicle labels state only some fields: ``white Audi.`` has no type, ``Truck.`` no
color or brand. For each such image we enumerate every caption that fills the
missing fields from the vehicle vocabulary (known fields fixed), score them
against the image with a CLIP model - zero-shot (``--model/--pretrained``) or a
trained checkpoint (self-enhancement) - and keep the best as the training
caption: ``This is a white Audi.`` -> ``This is a white Audi Sedan.``

The ATTR of a row never changes: relevance and the multi-positive loss use the
label, the richer caption only gives the text tower more to learn from.

Stages, each data in and data out: ``plan_augmentation`` (rows -> caption groups),
``choose_captions`` (embeddings -> winners and margins), ``apply_choices`` (rows ->
output rows); ``augment_captions`` does the file and model I/O around them.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.schema import VEHICLE
from ..data.vocabulary import VehicleAttributes, VehicleVocabulary, parse_vehicle_attr, strip_vehicle_attr
from ..errors import TrafficRetrievalError

VEHICLE_FIELDS = ("color", "brand", "type")  # the caption's word order: "white Audi Sedan"
REPORT_NAME = "augment_report.json"
EXAMPLES = 5


@dataclass
class AugmentCaptionsConfig:
    work: Path | None = None  # the prepare output (manifests, vehicle_vocabulary.json)
    checkpoint: Path | None = None  # a traffic-retrieval checkpoint (self-enhancement)
    model: str | None = None  # or a plain open_clip model + pretrained tag (zero-shot)
    pretrained: str | None = None
    manifest: str = "train"  # input WORK/manifests/<manifest>.jsonl
    out_manifest: str = "train_augmented"
    keep_original: bool = False  # also keep the original caption as an extra training pair
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    progress: bool = True
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (autocast while encoding)


# ---------------------------------------------------------------- candidates


def parse_label_fields(attr: str, vocabulary: VehicleVocabulary) -> VehicleAttributes:
    """``parse_vehicle_attr`` that also reads a complete ``<color> <Brand> <Type>`` ATTR.

    The challenge never states all three, so the parser reads ``white Audi SUV``
    as the brand ``Audi SUV``; when the words before a known type form a known
    brand (and the whole is not itself a brand, like ``Balong Heavy Truck``), the
    label is complete and needs no augmentation.
    """
    fields = parse_vehicle_attr(attr, vocabulary.types)
    brand = fields.brand
    if brand is None or fields.type is not None or brand in vocabulary.brands:
        return fields
    for vehicle_type in vocabulary.types:
        if brand.endswith(" " + vehicle_type) and brand[: -len(vehicle_type) - 1] in vocabulary.brands:
            return VehicleAttributes(color=fields.color, brand=brand[: -len(vehicle_type) - 1], type=vehicle_type)
    return fields


def missing_fields(fields: VehicleAttributes) -> tuple[str, ...]:
    """The fields an ATTR does not state, in caption order: ``('type',)``, ``('color', 'brand')``."""
    return tuple(name for name in VEHICLE_FIELDS if getattr(fields, name) is None)


def missing_pattern(missing: tuple[str, ...]) -> str:
    return "+".join(missing) if missing else "none"


def vocabulary_values(vocabulary: VehicleVocabulary, name: str) -> list[str]:
    return {"color": vocabulary.colors, "brand": vocabulary.brands, "type": vocabulary.types}[name]


def fillable_fields(fields: VehicleAttributes, vocabulary: VehicleVocabulary) -> tuple[str, ...]:
    """Missing fields the vocabulary has values for (an empty list cannot fill anything)."""
    return tuple(name for name in missing_fields(fields) if vocabulary_values(vocabulary, name))


def enumerate_candidates(fields: VehicleAttributes, vocabulary: VehicleVocabulary) -> list[VehicleAttributes]:
    """Every completion of ``fields`` over the vocabulary, known fields fixed.

    Order is deterministic (color, then brand, then type, each in vocabulary order),
    so ties are broken the same way on every run.
    """
    options = []
    for name in VEHICLE_FIELDS:
        known = getattr(fields, name)
        options.append([known] if known is not None else (list(vocabulary_values(vocabulary, name)) or [None]))
    return [VehicleAttributes(color=color, brand=brand, type=vehicle_type) for color, brand, vehicle_type in itertools.product(*options)]


def candidate_phrase(fields: VehicleAttributes) -> str:
    """``white Audi Sedan``: the seed's augmented caption (brand-only labels give ``red Balong Heavy Truck Truck``)."""
    return " ".join(value for value in (fields.color, fields.brand, fields.type) if value)


# ---------------------------------------------------------------- caption form

_KNOWN_PREFIX = re.compile(r"^(?:this is an?|an?)\s+", re.IGNORECASE)
_ARTICLE_PREFIX = re.compile(r"^((?:this is )?)(an?) $", re.IGNORECASE)


def caption_frame(text: str, attr: str) -> tuple[str, str]:
    """Split a vehicle text around its ATTR: ``('This is a ', '.')`` for ``This is a white Audi.``.

    A text that does not contain its ATTR keeps a recognised ``A``/``This is a``
    opening, or none, and its final period.
    """
    body = strip_vehicle_attr(attr)
    if body:
        for flags in (0, re.IGNORECASE):
            match = re.search(r"(?<![\w-])" + re.escape(body) + r"(?![\w-])", text, flags)
            if match:
                return text[: match.start()], text[match.end() :]
    opening = _KNOWN_PREFIX.match(text)
    return (opening.group(0) if opening else ""), ("." if text.rstrip().endswith(".") else "")


def format_caption(prefix: str, phrase: str, suffix: str) -> str:
    """``prefix + phrase + suffix`` with ``a``/``an`` agreeing with a following color.

    Only a color (a lower-case word) changes the article: the real texts write
    ``An orange BMW`` but ``A SUV``, so an article before a brand or type stays.
    """
    match = _ARTICLE_PREFIX.match(prefix)
    if match and phrase[:1].islower():
        lead, article = match.group(1), match.group(2)
        new_article = "an" if phrase[:1] in "aeiou" else "a"
        if article[:1].isupper():
            new_article = new_article.capitalize()
        prefix = f"{lead}{new_article} "
    return f"{prefix}{phrase}{suffix}"


def augmented_caption(text: str, attr: str, fields: VehicleAttributes) -> str:
    """The original text with its ATTR replaced by the completed fields."""
    prefix, suffix = caption_frame(text, attr)
    return format_caption(prefix, candidate_phrase(fields), suffix)


# ---------------------------------------------------------------- plan, choose, apply


@dataclass
class CaptionGroup:
    """Rows that share a text frame and known fields, hence one candidate list."""

    candidates: list[VehicleAttributes]
    caption_ids: list[int]  # index into AugmentationPlan.captions, one per candidate
    rows: list[int] = field(default_factory=list)  # row indices
    pattern: str = ""


@dataclass
class AugmentationPlan:
    captions: list[str]  # every distinct candidate caption, each encoded once
    groups: list[CaptionGroup]
    images: list[str]  # distinct images of the rows to augment, each encoded once
    row_group: dict[int, int]  # row index -> group index
    row_image: dict[int, int]  # row index -> image index
    vehicle_rows: int = 0
    complete_rows: int = 0
    unfillable_rows: int = 0  # missing fields the vocabulary cannot fill
    patterns: dict[str, int] = field(default_factory=dict)


def plan_augmentation(rows: list[dict], vocabulary: VehicleVocabulary) -> AugmentationPlan:
    """Find the vehicle rows to augment and the distinct candidate captions they need."""
    caption_index: dict[str, int] = {}
    group_index: dict[tuple, int] = {}
    image_index: dict[str, int] = {}
    plan = AugmentationPlan([], [], [], {}, {})
    for row_number, row in enumerate(rows):
        if row.get("category") != VEHICLE:
            continue
        plan.vehicle_rows += 1
        fields = parse_label_fields(row["attr"], vocabulary)
        missing = missing_fields(fields)
        if not missing:
            plan.complete_rows += 1
            continue
        pattern = missing_pattern(missing)
        plan.patterns[pattern] = plan.patterns.get(pattern, 0) + 1
        if not fillable_fields(fields, vocabulary):
            plan.unfillable_rows += 1
            continue
        prefix, suffix = caption_frame(row["text"], row["attr"])
        key = (prefix, suffix, fields)
        if key not in group_index:
            candidates = enumerate_candidates(fields, vocabulary)
            ids = []
            for candidate in candidates:
                caption = format_caption(prefix, candidate_phrase(candidate), suffix)
                ids.append(caption_index.setdefault(caption, len(caption_index)))
            group_index[key] = len(plan.groups)
            plan.groups.append(CaptionGroup(candidates, ids, [], pattern))
        plan.groups[group_index[key]].rows.append(row_number)
        plan.row_group[row_number] = group_index[key]
        plan.row_image[row_number] = image_index.setdefault(row["image"], len(image_index))
    plan.captions = list(caption_index)
    plan.images = list(image_index)
    return plan


def choose_captions(plan: AugmentationPlan, image_embeddings, readable_images: list[int], text_embeddings, device: str = "cpu", block: int = 8192, progress: bool = False):
    """The best candidate per row: ``({row: candidate index in its group}, {row: margin})``.

    Scores are cosine similarities of L2-normalised embeddings. Per group one
    matrix product and a top-2; a row whose image was unreadable gets no choice.
    The margin (winner minus runner-up) is NaN when a group has one candidate.
    """
    import torch
    from tqdm import tqdm

    position = [-1] * len(plan.images)  # image index -> row of image_embeddings
    for embedding_row, image in enumerate(readable_images):
        position[image] = embedding_row
    images = image_embeddings.to(device=device, dtype=torch.float32)
    texts = text_embeddings.to(device=device, dtype=torch.float32)
    choices: dict[int, int] = {}
    margins: dict[int, float] = {}
    for group in tqdm(plan.groups, desc="score captions", unit="group", disable=not progress, leave=False):
        rows = [r for r in group.rows if position[plan.row_image[r]] >= 0]
        if not rows:
            continue
        candidate_texts = texts[torch.as_tensor(group.caption_ids, device=device)]
        image_rows = torch.as_tensor([position[plan.row_image[r]] for r in rows], device=device)
        for start in range(0, len(rows), block):
            scores = images[image_rows[start : start + block]] @ candidate_texts.T
            top = scores.topk(min(2, scores.shape[1]), dim=1)
            winners = top.indices[:, 0].tolist()
            gaps = (top.values[:, 0] - top.values[:, 1]).tolist() if scores.shape[1] > 1 else [float("nan")] * len(winners)
            for row, winner, gap in zip(rows[start : start + block], winners, gaps):
                choices[row], margins[row] = winner, gap
    return choices, margins


def apply_choices(rows: list[dict], plan: AugmentationPlan, choices: dict[int, int], keep_original: bool = False) -> list[dict]:
    """The output rows: augmented vehicle rows get the chosen caption and ``augmented_from``."""
    out = []
    for row_number, row in enumerate(rows):
        if row_number not in choices:
            out.append(row)
            continue
        group = plan.groups[plan.row_group[row_number]]
        caption = plan.captions[group.caption_ids[choices[row_number]]]
        if keep_original:
            out.append(row)
        out.append({**row, "text": caption, "augmented_from": row["text"]})
    return out


def margin_summary(margins: list[float]) -> dict | None:
    values = [m for m in margins if m == m]  # drop NaN (single-candidate groups)
    if not values:
        return None
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values)}


def pick_examples(rows: list[dict], plan: AugmentationPlan, choices: dict[int, int], count: int = EXAMPLES) -> list[dict]:
    """A few changed captions, taking the missing-field patterns in turn for variety."""
    by_pattern: dict[str, list[int]] = {}
    for row_number in sorted(choices):
        by_pattern.setdefault(plan.groups[plan.row_group[row_number]].pattern, []).append(row_number)
    examples, seen = [], set()
    for round_rows in itertools.zip_longest(*by_pattern.values()):
        for row_number in round_rows:
            if row_number is None or rows[row_number]["text"] in seen or len(examples) == count:
                continue
            seen.add(rows[row_number]["text"])
            group = plan.groups[plan.row_group[row_number]]
            examples.append({"attr": rows[row_number]["attr"], "original": rows[row_number]["text"], "augmented": plan.captions[group.caption_ids[choices[row_number]]]})
    return examples


# ---------------------------------------------------------------- the command


def _check_config(config: AugmentCaptionsConfig) -> Path:
    if config.work is None:
        raise TrafficRetrievalError("augment needs --work DIR (the prepare output)")
    for key in ("manifest", "out_manifest"):
        name = getattr(config, key)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise TrafficRetrievalError(f"{key} must be a manifest name under WORK/manifests (no path), got {name!r}")
    if config.manifest == config.out_manifest:
        raise TrafficRetrievalError(f"out_manifest must differ from manifest ({config.manifest!r}); augment never overwrites its input")
    if config.batch_size < 1:
        raise TrafficRetrievalError(f"batch_size must be at least 1, got {config.batch_size}")
    if config.workers < 0:
        raise TrafficRetrievalError(f"workers must be 0 or more, got {config.workers}")
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TrafficRetrievalError(f"precision must be auto, fp32, bf16 or fp16, got {config.precision!r}")
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


def augment_captions(config: AugmentCaptionsConfig) -> dict:
    """Run ``augment``; returns the report (also written to WORK/augment_report.json)."""
    from ..config import config_to_dict
    from ..io import atomic_write_json, atomic_write_jsonl

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
        from ..model.factory import create_model, load_checkpoint
        from ..retrieval.encode import encode_image_files
        from .trainer import autocast_dtype, resolve_device

        device = resolve_device(config.device)
        dtype = autocast_dtype(config.precision, device)
        if config.checkpoint:
            loaded = load_checkpoint(config.checkpoint, device=device)
        else:
            loaded = create_model(config.model, config.pretrained, None, device)
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
    """A short human-readable summary for the CLI."""
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
