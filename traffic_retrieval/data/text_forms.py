"""The one place where a caption or a query becomes the text the model encodes.

Two forms (``options.TextForm``), recorded in every checkpoint so that training,
validation, soup scoring, augmentation, ``predict``, ``search`` and ``serve`` agree:

- ``sentence`` (ours): captions and queries are encoded as written.
- ``a3r`` (the seed's, docs/method.md): a vehicle's training caption is the bare
  phrase (``white Audi Sedan``: no "This is a", no final period), a pedestrian's stays
  as written; every query loses its last character (the seed's ``line.strip()[:-1]``,
  normally the final period), and a vehicle query also loses its first "This is an ",
  "This is a ", "An " or "A " (case-sensitive, as the seed's script).

A vehicle caption in the bare form and a vehicle query of the same label therefore
encode the same string: ``This is a white Audi.`` -> ``white Audi`` on both sides.

The optional prompt (the seed's second inference variant) keeps the vehicle prefix and
appends a description of the camera domain to vehicle queries.
"""

from __future__ import annotations

import re

from .schema import VEHICLE

SENTENCE = "sentence"
A3R = "a3r"
A3R_VEHICLE_PREFIXES = ("This is an ", "This is a ", "An ", "A ")
SEED_PROMPT_SUFFIX = " image taken by traffic surveillance cameras"
_ANY_VEHICLE_PREFIX = re.compile(r"^\s*(?:this\s+is\s+(?:a|an)|a|an)\s+", re.IGNORECASE)


def bare_vehicle_phrase(text: str) -> str:
    """``This is a white Audi Sedan.`` -> ``white Audi Sedan``: the sentence frame (any
    capitalisation) and the final period removed; a bare phrase is returned unchanged."""
    stripped = _ANY_VEHICLE_PREFIX.sub("", text.strip(), count=1).rstrip()
    return stripped[:-1].rstrip() if stripped.endswith(".") else stripped


def training_caption(text: str, category: str, form: str) -> str:
    """The text a training (or augmentation) caption is encoded as."""
    if form == A3R and category == VEHICLE:
        return bare_vehicle_phrase(text)
    return text


def query_text(query: str, category: str, form: str, prompt_suffix: str | None = None) -> str:
    """The text a query of a (routed) category is encoded as; ``prompt_suffix`` (vehicle
    queries only) keeps the vehicle prefix and appends the suffix."""
    if form == A3R:
        text = query.strip()[:-1]
        if category == VEHICLE and prompt_suffix is None:
            text = _drop_a3r_prefix(text)
    else:
        text = query
        if category == VEHICLE and prompt_suffix is not None:
            text = text.strip()
            text = text[:-1] if text.endswith(".") else text
    return text + prompt_suffix if category == VEHICLE and prompt_suffix is not None else text


def _drop_a3r_prefix(text: str) -> str:
    for prefix in A3R_VEHICLE_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text
