"""``augment``: attribute augmentation of vehicle captions (docs/method.md, the seed's step 3).

Vehicle labels state only some fields: ``white Audi.`` has no type, ``Truck.`` no
color or brand. For each such image we enumerate every caption that fills the
missing fields from the vehicle vocabulary (known fields fixed), score them
against the image with a CLIP model - zero-shot (``--model/--pretrained``) or a
trained checkpoint (self-enhancement) - and keep the best as the training
caption: ``This is a white Audi.`` -> ``This is a white Audi Sedan.`` (caption form
``sentence``) or the seed's bare phrase ``white Audi Sedan`` (caption form ``bare``).

The ATTR of a row never changes: relevance and the multi-positive loss use the
label, the richer caption only gives the text tower more to learn from.

Stages, each data in and data out: ``plan_augmentation`` (rows -> caption groups,
the one place candidate strings are made), ``choose_captions`` (embeddings -> winners
and margins), ``apply_choices`` (rows -> output rows), ``candidate_lines`` (rows ->
the ``--candidates-out`` lines, for a dry run or a real one); ``commands/augment.py``
does the file and model I/O around them.
"""

from __future__ import annotations

import itertools
import re
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..data.schema import VEHICLE
from ..data.vocabulary import VehicleAttributes, VehicleVocabulary, parse_vehicle_attr, strip_vehicle_attr
from ..options import CaptionForm

VEHICLE_FIELDS = ("color", "brand", "type")  # the caption's word order: "white Audi Sedan"
EXAMPLES = 5


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


def vocabulary_with_labels(base: VehicleVocabulary, vehicle_attrs: Iterable[str]) -> VehicleVocabulary:
    """``base`` plus every value ``vehicle_attrs`` state, each list sorted.

    ``extract_vocabulary`` read with ``parse_label_fields`` against ``base``: a complete
    ``white Audi SUV`` adds the color ``white``, not a brand ``Audi SUV``.
    """
    values = {name: set(vocabulary_values(base, name)) for name in VEHICLE_FIELDS}
    for attr in vehicle_attrs:
        fields = parse_label_fields(attr, base)
        for name in VEHICLE_FIELDS:
            if getattr(fields, name) is not None:
                values[name].add(getattr(fields, name))
    return VehicleVocabulary(colors=sorted(values["color"]), types=sorted(values["type"]), brands=sorted(values["brand"]))


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


def candidate_frame(text: str, attr: str, caption_form: CaptionForm) -> tuple[str, str]:
    """What surrounds a candidate phrase: the label's own frame (``sentence``) or nothing (``bare``)."""
    if caption_form == "bare":
        return "", ""
    if caption_form == "sentence":
        return caption_frame(text, attr)
    raise ValueError(f"caption_form must be sentence or bare, got {caption_form!r}")


def candidate_captions(frame: tuple[str, str], candidates: list[VehicleAttributes]) -> list[str]:
    """The strings scored for ``candidates`` in ``frame``: ``This is a white Audi Sedan.`` or ``white Audi Sedan``."""
    prefix, suffix = frame
    return [format_caption(prefix, candidate_phrase(candidate), suffix) for candidate in candidates]


# ---------------------------------------------------------------- plan, choose, apply


COMPLETE = "complete"  # the label states every field: nothing to score
UNFILLABLE = "unfillable"  # the vocabulary has no values for the missing fields


@dataclass
class CaptionGroup:
    """Rows that share a text frame (in ``bare`` form: none) and known fields, hence one candidate list."""

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
    row_reason: dict[int, str] = field(default_factory=dict)  # vehicle row without candidates -> COMPLETE or UNFILLABLE
    caption_form: CaptionForm = "sentence"

    def row_captions(self, row_number: int) -> list[str]:
        """The candidate strings of one row, in enumeration order (empty when it has none)."""
        if row_number not in self.row_group:
            return []
        return [self.captions[caption_id] for caption_id in self.groups[self.row_group[row_number]].caption_ids]


def plan_augmentation(rows: list[dict], vocabulary: VehicleVocabulary, caption_form: CaptionForm = "sentence") -> AugmentationPlan:
    """Find the vehicle rows to augment and the distinct candidate captions they need.

    ``caption_form`` ``sentence`` keeps each label's frame around the phrase, ``bare``
    scores (and writes) the phrase alone, so rows with the same known fields share
    one group whatever their text.
    """
    caption_index: dict[str, int] = {}
    group_index: dict[tuple, int] = {}
    image_index: dict[str, int] = {}
    plan = AugmentationPlan([], [], [], {}, {}, caption_form=caption_form)
    for row_number, row in enumerate(rows):
        if row.get("category") != VEHICLE:
            continue
        plan.vehicle_rows += 1
        fields = parse_label_fields(row["attr"], vocabulary)
        missing = missing_fields(fields)
        if not missing:
            plan.complete_rows += 1
            plan.row_reason[row_number] = COMPLETE
            continue
        pattern = missing_pattern(missing)
        plan.patterns[pattern] = plan.patterns.get(pattern, 0) + 1
        if not fillable_fields(fields, vocabulary):
            plan.unfillable_rows += 1
            plan.row_reason[row_number] = UNFILLABLE
            continue
        frame = candidate_frame(row["text"], row["attr"], caption_form)
        key = (frame, fields)
        if key not in group_index:
            candidates = enumerate_candidates(fields, vocabulary)
            ids = [caption_index.setdefault(caption, len(caption_index)) for caption in candidate_captions(frame, candidates)]
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


def candidate_lines(rows: list[dict], plan: AugmentationPlan, choices: dict[int, int] | None = None) -> Iterator[dict]:
    """One ``--candidates-out`` line per vehicle row: ``image``, ``attr``, ``text`` and the exact
    ``candidates`` scored for it (in the plan's caption form, enumeration order).

    A row without candidates gets ``reason`` (``complete`` or ``unfillable``). A row with
    the seed's choice (``seed_choice``, the 4th field of the seed's augmented label file)
    also gets ``seed_choice_among_candidates``: whether that phrase is one of the
    candidates' phrases (in ``bare`` form: one of the candidates). With ``choices`` (a
    real run) every line gets ``chosen``: the winning string, or None (no candidates, or
    an unreadable image).
    """
    group_phrases: dict[int, set[str]] = {}
    for row_number, row in enumerate(rows):
        if row.get("category") != VEHICLE:
            continue
        line = {"image": row["image"], "attr": row["attr"], "text": row["text"], "candidates": plan.row_captions(row_number)}
        if row_number in plan.row_reason:
            line["reason"] = plan.row_reason[row_number]
        if "seed_choice" in row:
            line["seed_choice"] = row["seed_choice"]
            group = plan.row_group.get(row_number)
            if group is not None and group not in group_phrases:
                group_phrases[group] = {candidate_phrase(candidate) for candidate in plan.groups[group].candidates}
            line["seed_choice_among_candidates"] = group is not None and row["seed_choice"] in group_phrases[group]
        if choices is not None:
            line["chosen"] = line["candidates"][choices[row_number]] if row_number in choices else None
        yield line


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
