"""The vehicle vocabulary (colors, types, brands) and query routing by category.

Vehicle ATTR texts come in three forms (docs/data-format.md): ``<color> <Brand>.``, a type
alone (``Truck.``) or a brand alone (``Balong Heavy Truck.``). Colors are the
lower-case first word; a color-less ATTR is a type when it is one of the known
types, otherwise a brand. The set of types is part of the format (the challenge's
six), configurable for other data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import TrafficRetrievalError
from .schema import PEDESTRIAN, VEHICLE, VEHICLE_BRANDS, VEHICLE_COLORS, VEHICLE_TYPES

# Words that name a vehicle without naming a brand or type ("a white car").
GENERIC_VEHICLE_WORDS = ("car", "cars", "vehicle", "vehicles", "van", "auto")


@dataclass(frozen=True)
class VehicleAttributes:
    """The fields a vehicle ATTR states; a missing field is None."""

    color: str | None = None
    brand: str | None = None
    type: str | None = None


@dataclass
class VehicleVocabulary:
    colors: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    brands: list[str] = field(default_factory=list)

    @classmethod
    def published(cls) -> "VehicleVocabulary":
        """The challenge's published vocabulary (11 colors, 6 types, 65 brands)."""
        return cls(sorted(VEHICLE_COLORS), sorted(VEHICLE_TYPES), sorted(VEHICLE_BRANDS))

    def to_json_dict(self) -> dict[str, list[str]]:
        return {"colors": sorted(self.colors), "types": sorted(self.types), "brands": sorted(self.brands)}

    @classmethod
    def from_json_dict(cls, data: dict, source: str = "vocabulary") -> "VehicleVocabulary":
        """The vocabulary a JSON object states: ``colors``, ``types`` and ``brands`` (or the
        seed's ``Colors``, ``Types``, ``Brands``), each a list of non-empty strings; other keys
        are ignored. Anything else is a one-line error naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise TrafficRetrievalError(f"{source}: not a vocabulary JSON object (expected {{\"colors\": [...], \"types\": [...], "
                                        f"\"brands\": [...]}}, got {type(data).__name__})")

        def pick(key: str) -> list[str]:
            name = key if key in data else key.capitalize()
            if name not in data:
                raise TrafficRetrievalError(f"{source}: missing key {key!r} (or {key.capitalize()!r}), a list of strings")
            values = data[name]
            if not isinstance(values, list):
                raise TrafficRetrievalError(f"{source}: key {name!r} must be a list of strings, got {type(values).__name__}")
            for number, value in enumerate(values, start=1):
                if not isinstance(value, str):
                    raise TrafficRetrievalError(f"{source}: key {name!r} item {number} must be a string, got {type(value).__name__}")
                if not value.strip():
                    raise TrafficRetrievalError(f"{source}: key {name!r} item {number} is empty")
            return list(values)

        return cls(pick("colors"), pick("types"), pick("brands"))

    @classmethod
    def load(cls, path: str | Path) -> "VehicleVocabulary":
        from ..io import read_input_text

        text = read_input_text(path, "vocabulary file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrafficRetrievalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except RecursionError:
            raise TrafficRetrievalError(f"{path}: not valid JSON (nested too deeply)") from None
        return cls.from_json_dict(data, source=str(path))


def strip_vehicle_attr(attr: str) -> str:
    """``'white Audi.'`` -> ``'white Audi'`` (whitespace collapsed, final period dropped)."""
    return " ".join(attr.split()).rstrip(".").strip()


def parse_vehicle_attr(attr: str, vehicle_types: Iterable[str] = VEHICLE_TYPES) -> VehicleAttributes:
    """Split a vehicle ATTR into color, brand and type (see the module docstring)."""
    words = strip_vehicle_attr(attr).split(" ")
    if not words or not words[0]:
        return VehicleAttributes()
    color = None
    if words[0][:1].islower():
        color, words = words[0], words[1:]
    rest = " ".join(words)
    if not rest:
        return VehicleAttributes(color=color)
    if rest in set(vehicle_types):
        if color is not None:
            return VehicleAttributes(color=color, type=rest)
        return VehicleAttributes(type=rest)
    return VehicleAttributes(color=color, brand=rest)


def extract_vocabulary(
    vehicle_attrs: Iterable[str], vehicle_types: Iterable[str] = VEHICLE_TYPES
) -> VehicleVocabulary:
    """The vocabulary stated by a collection of vehicle ATTR texts."""
    vehicle_types = tuple(vehicle_types)
    colors: set[str] = set()
    types: set[str] = set()
    brands: set[str] = set()
    for attr in vehicle_attrs:
        fields = parse_vehicle_attr(attr, vehicle_types)
        if fields.color:
            colors.add(fields.color)
        if fields.type:
            types.add(fields.type)
        if fields.brand:
            brands.add(fields.brand)
    return VehicleVocabulary(sorted(colors), sorted(types), sorted(brands))


def _word_pattern(words: Iterable[str]) -> re.Pattern:
    alternatives = sorted({w.lower() for w in words if w}, key=len, reverse=True)
    if not alternatives:
        return re.compile(r"(?!x)x")
    return re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in alternatives) + r")(?![\w-])")


class QueryRouter:
    """The ``vocabulary`` router: routes a query to ``vehicle`` when it names a vehicle type, brand or a generic
    vehicle word (case-insensitive, whole words), otherwise to ``pedestrian``."""

    def __init__(self, vocabulary: VehicleVocabulary | None = None):
        vocabulary = vocabulary or VehicleVocabulary.published()
        self._vehicle_words = _word_pattern([*vocabulary.types, *vocabulary.brands, *GENERIC_VEHICLE_WORDS])

    def __call__(self, query: str) -> str:
        return VEHICLE if self._vehicle_words.search(query.lower()) else PEDESTRIAN


class A3RQueryRouter:
    """The seed's router: ``vehicle`` when a vehicle type or brand of the vocabulary occurs
    anywhere in the query (case-sensitive substring: "Bus" in "Minibus" counts, "bus" does
    not), otherwise ``pedestrian``."""

    def __init__(self, vocabulary: VehicleVocabulary | None = None):
        vocabulary = vocabulary or VehicleVocabulary.published()
        names = sorted({name for name in (*vocabulary.types, *vocabulary.brands) if name}, key=len, reverse=True)
        self._names = re.compile("|".join(re.escape(name) for name in names)) if names else None

    def __call__(self, query: str) -> str:
        return VEHICLE if self._names is not None and self._names.search(query) else PEDESTRIAN


def make_router(kind: str, vocabulary: VehicleVocabulary | None = None):
    """The query router ``kind`` names (``options.RouterKind``): ``vocabulary`` or ``a3r``."""
    return A3RQueryRouter(vocabulary) if kind == "a3r" else QueryRouter(vocabulary)
