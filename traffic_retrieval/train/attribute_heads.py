"""Auxiliary attribute heads on the image tower.

The labels say more than "this caption fits": a pedestrian ATTR is 21 flags and a
vehicle ATTR names a color, a brand or a type. Small linear heads on the image
embedding predict them (binary cross-entropy for the flags, cross-entropy for
each stated vehicle field), adding supervision that the contrastive loss only
sees through text. The heads live beside the open_clip weights in the
checkpoint (key ``attribute_heads``), so plain open_clip still loads it.
"""

from __future__ import annotations

from ..data.schema import NUM_PEDESTRIAN_FLAGS
from ..data.vocabulary import VehicleVocabulary, parse_vehicle_attr

IGNORE = -100


def attribute_targets(rows: list[dict], vocabulary: VehicleVocabulary) -> dict:
    """Per-row targets: pedestrian flags (with a mask) and vehicle color/type/brand ids (IGNORE when unstated)."""
    import torch

    count = len(rows)
    flags = torch.zeros((count, NUM_PEDESTRIAN_FLAGS))
    is_pedestrian = torch.zeros(count, dtype=torch.bool)
    fields = {name: torch.full((count,), IGNORE, dtype=torch.long) for name in ("color", "type", "brand")}
    index = {"color": {c: i for i, c in enumerate(vocabulary.colors)}, "type": {t: i for i, t in enumerate(vocabulary.types)},
             "brand": {b: i for i, b in enumerate(vocabulary.brands)}}
    for row_number, row in enumerate(rows):
        if row["category"] == "pedestrian":
            flags[row_number] = torch.tensor([float(flag) for flag in row["attr"].split(",")])
            is_pedestrian[row_number] = True
            continue
        stated = parse_vehicle_attr(row["attr"], vocabulary.types)
        for name in ("color", "type", "brand"):
            value = getattr(stated, name)
            if value in index[name]:
                fields[name][row_number] = index[name][value]
    return {"flags": flags, "is_pedestrian": is_pedestrian, **fields}


def make_attribute_heads(embed_dim: int, vocabulary: VehicleVocabulary):
    import torch.nn as nn

    return nn.ModuleDict({
        "flags": nn.Linear(embed_dim, NUM_PEDESTRIAN_FLAGS),
        "vehicle_color": nn.Linear(embed_dim, max(1, len(vocabulary.colors))),
        "vehicle_type": nn.Linear(embed_dim, max(1, len(vocabulary.types))),  # "type" would shadow Module.type
        "vehicle_brand": nn.Linear(embed_dim, max(1, len(vocabulary.brands))),
    })


def head_logits(heads, image_features) -> dict:
    features = image_features.float()
    return {name: head(features) for name, head in heads.items()}


def attribute_loss(logits: dict, targets: dict, batch_index):
    """Mean of the flag BCE (pedestrian rows) and each vehicle field's CE (rows that state it)."""
    import torch
    import torch.nn.functional as F

    losses = []
    pedestrian = targets["is_pedestrian"][batch_index]
    if pedestrian.any():
        losses.append(F.binary_cross_entropy_with_logits(logits["flags"][pedestrian], targets["flags"][batch_index][pedestrian]))
    for name in ("color", "type", "brand"):
        labels = targets[name][batch_index]
        if (labels != IGNORE).any():
            losses.append(F.cross_entropy(logits[f"vehicle_{name}"], labels, ignore_index=IGNORE))
    return torch.stack(losses).mean() if losses else sum(v.sum() for v in logits.values()) * 0
