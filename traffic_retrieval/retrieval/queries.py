"""Query handling before encoding (the seed's inference recipe).

Vehicle queries lose the sentence prefix ("A ", "An ", "This is a ") and the
final period, and may get a prompt suffix describing the camera domain
(" image taken by traffic surveillance cameras"). Pedestrian captions are
encoded as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.schema import VEHICLE

SEED_PROMPT_SUFFIX = " image taken by traffic surveillance cameras"
_VEHICLE_PREFIX = re.compile(r"^\s*(?:this\s+is\s+(?:a|an)|a|an)\s+", re.IGNORECASE)


@dataclass
class QueryConfig:
    strip_vehicle_prefix: bool = False  # "This is a white Audi." -> "white Audi"
    prompt: bool = False  # append prompt_suffix to vehicle queries
    prompt_suffix: str = SEED_PROMPT_SUFFIX


def strip_vehicle_query(text: str) -> str:
    """``"This is a white Audi."`` -> ``"white Audi"``; other texts lose only surrounding space and the final period."""
    stripped = _VEHICLE_PREFIX.sub("", text.strip(), count=1).rstrip()
    return stripped[:-1].rstrip() if stripped.endswith(".") else stripped


def text_to_encode(query: str, category: str, config: QueryConfig) -> str:
    """The text the model encodes for a query of a given (routed) category."""
    if category != VEHICLE:
        return query
    text = strip_vehicle_query(query) if config.strip_vehicle_prefix or config.prompt else query
    return text + config.prompt_suffix if config.prompt else text
