"""A deterministic synthetic dataset in the exact challenge layout (docs/data-format.md).

``generate_dataset(SynthConfig(out=..., seed=...))`` writes::

    OUT/train/train_label.txt, OUT/train/train_images/
    OUT/val/val_label.txt, OUT/val/val_images/
    OUT/val_camera/val_camera_label.txt, OUT/val_camera/val_camera_images/
    OUT/test/test_text.txt, OUT/test/test_images/
    OUT/ground_truth/test_gt.txt, OUT/ground_truth/test_label.txt
    OUT/synth_config.json

How the labels are made:

- Pedestrians draw their 21 flags from a global pool of distinct flag vectors
  (drawn once per seed from PA-100K-like marginals with consistency rules, and
  weighted Zipf-like by how often each came up), shared by all splits, so
  attribute combinations repeat as in the real data, where 10,000 test
  pedestrians share about 700 flag vectors.
- Vehicles have a full hidden (colour, brand, type); the brand implies a plausible
  type; the label states ``<color> <Brand>.``, a type alone or (for two truck
  brands) a brand alone, in the real proportions.
- Captions follow the real texts' grammar (``captions``); images are drawn
  by ``draw``; the test split gets a surveillance look (domain shift).
- ``val_camera`` is a second validation split in the test split's surveillance
  look (the same drawing, downscale and JPEG quality) with images, labels and
  names of its own: the validation that sees the domain shift, which ``train``,
  ``ablate`` and ``soup`` choose by where it exists. Its counts of 0 leave it out.

Everything is a function of the seed: the plan (names, labels, captions) is made
in one process, and each image uses its own generator seeded from (seed, split,
category, index), so the output is byte-identical for any number of workers.
``val_camera`` draws from streams of its own (its names too, never one another
split uses), so train, val and test are byte-identical with or without it, and
to what the generator wrote before the split existed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..data.schema import PEDESTRIAN, PEDESTRIAN_FLAGS, VEHICLE, VEHICLE_BRANDS, VEHICLE_COLORS
from ..errors import TrafficRetrievalError
from .captions import flags_to_dict, pedestrian_caption, vehicle_text

CAMERA_VAL_SPLIT = "val_camera"
SPLITS: tuple[str, ...] = ("train", "val", "test", CAMERA_VAL_SPLIT)
# The splits whose names come from the one shared draw (in this order); a split added
# later draws its names from a stream of its own, so these keep theirs.
_SHARED_NAME_SPLITS: tuple[str, ...] = ("train", "val", "test")
SURVEILLANCE_SPLITS: tuple[str, ...] = ("test", CAMERA_VAL_SPLIT)  # drawn in the surveillance look
LABELLED_SPLITS: tuple[str, ...] = ("train", "val", CAMERA_VAL_SPLIT)  # written as SPLIT/SPLIT_label.txt
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3, CAMERA_VAL_SPLIT: 4}
_CATEGORY_IDS = {PEDESTRIAN: 1, VEHICLE: 2}
# Independent random streams derived from the seed (numpy SeedSequence entropy).
_STREAM_POOL, _STREAM_NAMES, _STREAM_QUERIES, _STREAM_PLAN, _STREAM_IMAGE = 11, 12, 13, 14, 15

# The global pedestrian flag-vector pool: the distinct vectors among this many draws
# from the marginals (about 400), and the spread of their random popularity. With
# the default test split (800 pedestrians) a query then has about 10 relevant images
# (8 to 13 depending on the seed). Larger test splits scale the draws, which keeps
# that number.
PEDESTRIAN_POOL_DRAWS = 1000
PEDESTRIAN_POOL_POPULARITY = 0.5
PEDESTRIAN_POOL_TEST_SIZE = 800

JPEG_QUALITY_CLEAN = 92
JPEG_QUALITY_SURVEILLANCE = 60
# Image sizes (pixels, before the surveillance downscale).
PEDESTRIAN_WIDTH = (48, 80)
PEDESTRIAN_ASPECT = (2.0, 3.0)  # height / width
VEHICLE_WIDTH = (110, 190)
VEHICLE_ASPECT = {"Bus": (1.7, 2.0), "Truck": (1.6, 2.0)}  # width / height
VEHICLE_ASPECT_DEFAULT = (1.4, 1.9)
CHUNK_SIZE = 48

# PA-100K-like marginals; conditional ones are keyed by gender. Data, read by
# ``sample_pedestrian_flags``.
PEDESTRIAN_MARGINALS: dict = {
    "Female": 0.45,
    "age": {"AgeOver60": 0.02, "Age18-60": 0.91, "AgeLess18": 0.07},
    "orientation": {"Front": 0.35, "Side": 0.30, "Back": 0.35},
    "Hat": {"male": 0.06, "female": 0.025},
    "Glasses": {"male": 0.30, "female": 0.15},  # given Front or Side: glasses must be visible
    "HandBag": {"male": 0.10, "female": 0.28},
    "ShoulderBag": {"male": 0.12, "female": 0.28},
    "Backpack": {"male": 0.18, "female": 0.13},
    "HoldObjectsInFront": {"male": 0.02, "female": 0.02},
    "ShortSleeve": 0.57,  # otherwise LongSleeve
    "upper_pattern": {"UpperStride": 0.05, "UpperLogo": 0.15, "UpperPlaid": 0.11, "UpperSplice": 0.045},
    "second_pattern": 0.03,  # at most one pattern, mostly
    "LongCoat": {"male": 0.015, "female": 0.06},  # implies LongSleeve
    "Skirt&Dress": {"male": 0.003, "female": 0.22},
    "skirt_with_coat": 0.15,  # a skirt under a long coat is rarer
    "several_carried": 0.25,  # keep a second carried item with this probability
}
BOOTS_PROBABILITY = 0.02  # not a flag, but real captions name boots (captions.py)

# Vehicles: brand popularity (relative), plausible types per brand, label forms.
_BRAND_POPULAR = {
    "Volkswagen": 4.0, "Toyota": 3.5, "Honda": 3.0, "Nissan": 3.0, "Buick": 3.0, "Hyundai": 2.5,
    "Audi": 2.5, "BMW": 2.5, "Benz": 2.5, "Ford": 2.5, "Chevrolet": 2.5, "Chana": 2.5, "Geely": 2.0,
    "BYD": 2.0, "Kia": 2.0, "Citroen": 2.0, "Mazda": 2.0, "GreatWall": 2.0, "Chery": 2.0,
    "Karma": 0.4, "Bentley": 0.4, "Porsche": 0.6, "Infiniti": 0.6, "Luxgen": 0.5, "ZXAUTO": 0.4,
    "HAFEI": 0.5, "Shuanghuan": 0.5, "Style": 0.5, "MORRIS-GARAGE": 0.6, "China-Moto": 0.6,
    "Balong Heavy Truck": 0.35, "Hongyan": 0.35,
}
BRAND_WEIGHTS: dict[str, float] = {brand: _BRAND_POPULAR.get(brand, 1.0) for brand in VEHICLE_BRANDS}
_CAR = {"Sedan": 0.65, "SUV": 0.35}
# The types each brand makes, by share; a brand not named here makes cars (_CAR).
BRAND_TYPES: dict[str, dict[str, float]] = {
    **{brand: _CAR for brand in VEHICLE_BRANDS},
    # coach builders
    "Yutong": {"Bus": 0.85, "Microbus": 0.15},
    "Golden Dragon": {"Bus": 0.8, "Microbus": 0.2},
    "KINGLONG": {"Bus": 0.75, "Microbus": 0.25},
    # truck makers, some of them also making vans or cars
    **dict.fromkeys(("Balong Heavy Truck", "Shacman", "Hongyan"), {"Truck": 1.0}),
    "FOTON": {"Truck": 0.75, "Minivan": 0.25},
    "Isuzu": {"Truck": 0.6, "SUV": 0.4},
    "JMC": {"Truck": 0.5, "SUV": 0.5},
    "Dongfeng": {"Truck": 0.35, "SUV": 0.35, "Sedan": 0.3},
    "FAW": {"Truck": 0.3, "Sedan": 0.5, "SUV": 0.2},
    "JAC": {"Sedan": 0.4, "SUV": 0.3, "Truck": 0.3},
    "Style": {"Truck": 0.7, "Microbus": 0.3},
    # van makers
    "Jinbei": {"Microbus": 0.55, "Minivan": 0.45},
    "SGMW": {"Minivan": 0.6, "Microbus": 0.4},
    "Iveco": {"Minivan": 0.5, "Microbus": 0.3, "Truck": 0.2},
    "HAFEI": {"Minivan": 0.6, "Sedan": 0.4},
    "Luxgen": {"SUV": 0.6, "Minivan": 0.4},
    # mostly SUVs
    **dict.fromkeys(("Landrover", "LEOPAARD", "Jeep"), {"SUV": 0.9, "Sedan": 0.1}),
    "GreatWall": {"SUV": 0.7, "Sedan": 0.2, "Truck": 0.1},
    "BAOJUN": {"SUV": 0.4, "Sedan": 0.3, "Minivan": 0.3},
    # cars with a type mix of their own
    **dict.fromkeys(("XIALI", "Mini"), {"Sedan": 1.0}),
    "Buick": {"Sedan": 0.6, "SUV": 0.2, "Minivan": 0.2},
    "Honda": {"Sedan": 0.55, "SUV": 0.35, "Minivan": 0.1},
}
# Brands the real labels only ever state alone ("Balong Heavy Truck.").
BRAND_ONLY_BRANDS: tuple[str, ...] = ("Balong Heavy Truck", "Hongyan")
TYPE_ONLY_FRACTION = 0.14  # of all vehicles; the rest (but brand-only brands) is "<color> <Brand>."
# Type-alone labels in the real data are spread over the types much more evenly
# than the hidden types of branded cars.
TYPE_ONLY_WEIGHTS: dict[str, float] = {"Truck": 0.2, "SUV": 0.2, "Bus": 0.2, "Sedan": 0.16,
                                       "Microbus": 0.13, "Minivan": 0.11}
COLOR_WEIGHTS: dict[str, float] = {
    "white": 1.6, "black": 1.5, "grey": 1.3, "red": 1.1, "blue": 1.1,
    "brown": 0.9, "green": 0.9, "yellow": 0.9, "orange": 0.8, "pink": 0.7, "purple": 0.7,
}


@dataclass
class SynthConfig:
    out: Path
    seed: int = 0
    train_pedestrians: int = 2400
    train_vehicles: int = 1200
    val_pedestrians: int = 300
    val_vehicles: int = 150
    test_pedestrians: int = 800
    test_vehicles: int = 400
    val_camera_pedestrians: int | None = None  # the camera-domain val split; None: as many as val (0 and 0: no split)
    val_camera_vehicles: int | None = None
    workers: int = 2  # processes; the output is identical for any value
    overwrite: bool = False  # replace an earlier dataset's split folders in ``out``

    def count(self, split: str, category: str) -> int:
        kind = "pedestrians" if category == PEDESTRIAN else "vehicles"
        value = getattr(self, f"{split}_{kind}")
        if value is None and split == CAMERA_VAL_SPLIT:
            value = getattr(self, f"val_{kind}")  # unset: as many as val
        return int(value)

    def writes(self, split: str) -> bool:
        """Whether the dataset has ``split``: always, but the camera val split needs images."""
        return split != CAMERA_VAL_SPLIT or self.count(split, PEDESTRIAN) + self.count(split, VEHICLE) > 0


@dataclass
class ImageSpec:
    """One image to draw and its label."""

    split: str
    category: str
    index: int
    name: str  # file name on disk, with .jpg
    attr: str
    text: str
    flags: tuple[int, ...] = ()
    boots: bool = False
    vehicle: tuple[str, str, str] = ("", "", "")  # hidden (color, brand, type)

    @property
    def label_name(self) -> str:
        """The name as the label files write it: pedestrians of the labelled splits without extension."""
        if self.category == PEDESTRIAN and self.split != "test":
            return self.name[: -len(".jpg")]
        return self.name


@dataclass
class DatasetPlan:
    specs: dict[str, list[ImageSpec]] = field(default_factory=dict)  # split -> specs
    test_queries: list[ImageSpec] = field(default_factory=list)  # test specs in query order


# --------------------------------------------------------------------- pedestrians

def _by_gender(value, gender: str) -> float:
    return float(value[gender]) if isinstance(value, dict) else float(value)


def sample_pedestrian_flags(rng: np.random.Generator, marginals: dict = PEDESTRIAN_MARGINALS) -> tuple[int, ...]:
    """One consistent flag vector (PEDESTRIAN_FLAGS order) from the marginals: exactly one
    age and one orientation, exactly one sleeve length, no glasses seen from the back,
    a long coat with long sleeves, mostly one upper pattern and one carried item."""
    flags = dict.fromkeys(PEDESTRIAN_FLAGS, 0)
    female = rng.random() < marginals["Female"]
    gender = "female" if female else "male"
    flags["Female"] = int(female)
    ages, age_p = zip(*marginals["age"].items())
    flags[ages[int(rng.choice(len(ages), p=np.asarray(age_p) / sum(age_p)))]] = 1
    views, view_p = zip(*marginals["orientation"].items())
    view = views[int(rng.choice(len(views), p=np.asarray(view_p) / sum(view_p)))]
    flags[view] = 1
    flags["Hat"] = int(rng.random() < _by_gender(marginals["Hat"], gender))
    flags["Glasses"] = int(view != "Back" and rng.random() < _by_gender(marginals["Glasses"], gender))
    carried = [name for name in ("HandBag", "ShoulderBag", "Backpack", "HoldObjectsInFront")
               if rng.random() < _by_gender(marginals[name], gender)]
    while len(carried) > 1 and rng.random() >= marginals["several_carried"]:
        carried.pop(int(rng.integers(len(carried))))
    for name in carried:
        flags[name] = 1
    flags["LongCoat"] = int(rng.random() < _by_gender(marginals["LongCoat"], gender))
    short = rng.random() < marginals["ShortSleeve"] and not flags["LongCoat"]
    flags["ShortSleeve" if short else "LongSleeve"] = 1
    patterns, pattern_p = zip(*marginals["upper_pattern"].items())
    none_p = max(0.0, 1.0 - sum(pattern_p))
    choice = int(rng.choice(len(patterns) + 1, p=np.asarray([*pattern_p, none_p]) / (sum(pattern_p) + none_p)))
    if choice < len(patterns):
        flags[patterns[choice]] = 1
        if rng.random() < marginals["second_pattern"]:
            others = [p for p in patterns if p != patterns[choice]]
            flags[others[int(rng.integers(len(others)))]] = 1
    skirt_p = _by_gender(marginals["Skirt&Dress"], gender)
    if flags["LongCoat"]:
        skirt_p *= marginals["skirt_with_coat"]
    flags["Skirt&Dress"] = int(rng.random() < skirt_p)
    return tuple(flags[name] for name in PEDESTRIAN_FLAGS)


def pedestrian_flag_pool(
    seed: int, draws: int = PEDESTRIAN_POOL_DRAWS, popularity_sigma: float = PEDESTRIAN_POOL_POPULARITY
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The seed's pool of distinct flag vectors and their probabilities, shared by all splits.

    ``draws`` vectors come from the marginals; the distinct ones form the pool, each
    weighted by how often it came up (a Zipf-like rank-frequency: a few plain outfits
    are common, most combinations rare) times a random popularity factor. Weighting
    by the counts keeps the marginals; weighting distinct vectors equally would not
    (rare attributes make more distinct vectors).
    """
    rng = np.random.default_rng([seed, _STREAM_POOL])
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(draws):
        flags = sample_pedestrian_flags(rng)
        counts[flags] = counts.get(flags, 0) + 1
    vectors = list(counts)
    weights = np.asarray([counts[v] for v in vectors], dtype=np.float64)
    weights *= np.exp(rng.normal(0.0, popularity_sigma, size=len(vectors)))
    return vectors, weights / weights.sum()


def flags_attr(flags: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in flags)


# ------------------------------------------------------------------------ vehicles

def _weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = [name for name, weight in weights.items() if weight > 0]
    p = np.asarray([weights[name] for name in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_vehicle(rng: np.random.Generator) -> tuple[str, str, str, str]:
    """A hidden (color, brand, type) and the ATTR its label states."""
    colors = {c: COLOR_WEIGHTS.get(c, 1.0) for c in VEHICLE_COLORS}
    color = _weighted(rng, colors)
    brand_only_share = sum(BRAND_WEIGHTS[b] for b in BRAND_ONLY_BRANDS) / sum(BRAND_WEIGHTS.values())
    u = rng.random()
    if u < TYPE_ONLY_FRACTION:
        vehicle_type = _weighted(rng, TYPE_ONLY_WEIGHTS)
        # A brand that makes this type, by popularity.
        candidates = {b: BRAND_WEIGHTS[b] * BRAND_TYPES[b].get(vehicle_type, 0.0) for b in VEHICLE_BRANDS}
        brand = _weighted(rng, candidates)
        return color, brand, vehicle_type, f"{vehicle_type}."
    if u < TYPE_ONLY_FRACTION + brand_only_share:
        brand = _weighted(rng, {b: BRAND_WEIGHTS[b] for b in BRAND_ONLY_BRANDS})
        return color, brand, _weighted(rng, BRAND_TYPES[brand]), f"{brand}."
    brand = _weighted(rng, {b: w for b, w in BRAND_WEIGHTS.items() if b not in BRAND_ONLY_BRANDS})
    return color, brand, _weighted(rng, BRAND_TYPES[brand]), f"{color} {brand}."


# -------------------------------------------------------------------------- naming

def _pedestrian_names(rng: np.random.Generator, count: int) -> list[str]:
    if count > 1_000_000:
        raise TrafficRetrievalError(f"at most 1000000 pedestrians fit 6-digit names, asked for {count}")
    return [f"{number:06d}.jpg" for number in rng.choice(1_000_000, size=count, replace=False)]


def _pedestrian_names_avoiding(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """``count`` distinct 6-digit names that are not in ``taken``."""
    if count + len(taken) > 1_000_000:
        raise TrafficRetrievalError(f"at most 1000000 pedestrians fit 6-digit names, asked for {count + len(taken)}")
    names: list[str] = []
    seen = set(taken)
    while len(names) < count:
        for number in rng.integers(0, 1_000_000, size=count - len(names)):
            name = f"{number:06d}.jpg"
            if name not in seen:
                seen.add(name)
                names.append(name)
    return names


def _vehicle_names(rng: np.random.Generator, count: int, taken: Iterable[str] = ()) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    names: list[str] = []
    seen: set[str] = set(taken)
    while len(names) < count:
        name = "".join(letters[rng.integers(0, 26, size=10)]) + ".jpg"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


# ---------------------------------------------------------------------------- plan

def validate_config(config: SynthConfig) -> None:
    for split in SPLITS:
        for category in (PEDESTRIAN, VEHICLE):
            value = getattr(config, f"{split}_{'pedestrians' if category == PEDESTRIAN else 'vehicles'}")
            if value is None and split == CAMERA_VAL_SPLIT:
                continue  # as many as val, checked there
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise TrafficRetrievalError(
                    f"synth: image counts must be integers >= 0, got {split} {category} = {value!r}")
    if not isinstance(config.workers, (int, np.integer)) or config.workers < 1:
        raise TrafficRetrievalError(f"synth: workers must be an integer >= 1, got {config.workers!r}")
    if not isinstance(config.seed, (int, np.integer)) or config.seed < 0:
        raise TrafficRetrievalError(f"synth: seed must be an integer >= 0, got {config.seed!r}")


def plan_dataset(config: SynthConfig) -> DatasetPlan:
    """Names, labels and captions of every image; cheap and single-process."""
    seed = int(config.seed)
    name_rng = np.random.default_rng([seed, _STREAM_NAMES])
    shared_pedestrian_names = _pedestrian_names(name_rng, sum(config.count(s, PEDESTRIAN) for s in _SHARED_NAME_SPLITS))
    shared_vehicle_names = _vehicle_names(name_rng, sum(config.count(s, VEHICLE) for s in _SHARED_NAME_SPLITS))
    # The camera val split's names: a stream of its own, none that another split uses.
    camera_name_rng = np.random.default_rng([seed, _STREAM_NAMES, _SPLIT_IDS[CAMERA_VAL_SPLIT]])
    camera_pedestrian_names = _pedestrian_names_avoiding(
        camera_name_rng, config.count(CAMERA_VAL_SPLIT, PEDESTRIAN), set(shared_pedestrian_names))
    camera_vehicle_names = _vehicle_names(camera_name_rng, config.count(CAMERA_VAL_SPLIT, VEHICLE), shared_vehicle_names)
    shared_names = (iter(shared_pedestrian_names), iter(shared_vehicle_names))  # consumed in _SHARED_NAME_SPLITS order
    names_by_split = {split: shared_names for split in _SHARED_NAME_SPLITS}
    names_by_split[CAMERA_VAL_SPLIT] = (iter(camera_pedestrian_names), iter(camera_vehicle_names))
    draws = round(PEDESTRIAN_POOL_DRAWS * max(1.0, config.test_pedestrians / PEDESTRIAN_POOL_TEST_SIZE))
    pool, pool_p = pedestrian_flag_pool(seed, draws)
    plan = DatasetPlan()
    for split in SPLITS:
        pedestrian_names, vehicle_names = names_by_split[split]
        specs: list[ImageSpec] = []
        rng = np.random.default_rng([seed, _STREAM_PLAN, _SPLIT_IDS[split], _CATEGORY_IDS[PEDESTRIAN]])
        for index in range(config.count(split, PEDESTRIAN)):
            flags = pool[int(rng.choice(len(pool), p=pool_p))]
            boots = bool(rng.random() < BOOTS_PROBABILITY)
            text = pedestrian_caption(flags_to_dict(flags), rng, boots=boots)
            specs.append(ImageSpec(split, PEDESTRIAN, index, next(pedestrian_names), flags_attr(flags), text,
                                   flags=flags, boots=boots))
        rng = np.random.default_rng([seed, _STREAM_PLAN, _SPLIT_IDS[split], _CATEGORY_IDS[VEHICLE]])
        for index in range(config.count(split, VEHICLE)):
            color, brand, vehicle_type, attr = sample_vehicle(rng)
            specs.append(ImageSpec(split, VEHICLE, index, next(vehicle_names), attr, vehicle_text(attr, rng),
                                   vehicle=(color, brand, vehicle_type)))
        plan.specs[split] = specs
    query_rng = np.random.default_rng([seed, _STREAM_QUERIES])
    test = plan.specs["test"]
    plan.test_queries = [test[int(i)] for i in query_rng.permutation(len(test))]
    return plan


def relevant_images(gallery: Iterable[ImageSpec]) -> dict[str, list[str]]:
    """ATTR -> file names of the gallery images with that ATTR, in gallery order."""
    by_attr: dict[str, list[str]] = {}
    for spec in gallery:
        by_attr.setdefault(spec.attr, []).append(spec.name)
    return by_attr


# --------------------------------------------------------------------------- render

def _image_rng(seed: int, spec: ImageSpec) -> np.random.Generator:
    entropy = [seed, _STREAM_IMAGE, _SPLIT_IDS[spec.split], _CATEGORY_IDS[spec.category], spec.index]
    return np.random.default_rng(entropy)


def render_image(seed: int, spec: ImageSpec):
    """The PIL image of one spec (a pure function of the seed and the spec)."""
    from .draw import clean_look, draw_pedestrian, draw_vehicle, surveillance_look

    rng = _image_rng(seed, spec)
    surveillance = spec.split in SURVEILLANCE_SPLITS
    if spec.category == PEDESTRIAN:
        width = int(rng.integers(PEDESTRIAN_WIDTH[0], PEDESTRIAN_WIDTH[1] + 1))
        height = int(round(width * rng.uniform(*PEDESTRIAN_ASPECT)))
        image = draw_pedestrian(flags_to_dict(spec.flags), (width, height), rng, boots=spec.boots,
                                top_reserve=0.1 if surveillance else 0.02)
        text_fraction, text_width, min_side = 0.075, 0.95, 38
    else:
        color, brand, vehicle_type = spec.vehicle
        width = int(rng.integers(VEHICLE_WIDTH[0], VEHICLE_WIDTH[1] + 1))
        height = int(round(width / rng.uniform(*VEHICLE_ASPECT.get(vehicle_type, VEHICLE_ASPECT_DEFAULT))))
        image = draw_vehicle(color, brand, vehicle_type, (width, height), rng,
                             top_reserve=0.14 if surveillance else 0.02)
        text_fraction, text_width, min_side = 0.1, 0.65, 56
    if surveillance:
        return surveillance_look(image, rng, text_fraction, text_width, min_side)
    return clean_look(image, rng)


def _image_dir(out: Path, split: str) -> Path:
    return out / split / f"{split}_images"


def _render_chunk(args: tuple[str, int, list[ImageSpec]]) -> int:
    out, seed, specs = args
    for spec in specs:
        image = render_image(seed, spec)
        quality = JPEG_QUALITY_SURVEILLANCE if spec.split in SURVEILLANCE_SPLITS else JPEG_QUALITY_CLEAN
        image.save(_image_dir(Path(out), spec.split) / spec.name, format="JPEG", quality=quality,
                   subsampling=2, optimize=False)
    return len(specs)


def _render_all(config: SynthConfig, specs: list[ImageSpec], progress: bool) -> None:
    chunks = [(str(config.out), int(config.seed), specs[i: i + CHUNK_SIZE]) for i in range(0, len(specs), CHUNK_SIZE)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc="synth images", unit="img")
    try:
        if config.workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                done = _render_chunk(chunk)
                if bar is not None:
                    bar.update(done)
        else:
            import multiprocessing

            # spawn: safe whatever the parent imported (torch, threads), same on every OS.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=int(config.workers), mp_context=context) as pool:
                for done in pool.map(_render_chunk, chunks):
                    if bar is not None:
                        bar.update(done)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------- write

def _write_text(path: Path, lines: Iterable[str]) -> None:
    """Writes UTF-8 lines with '\\n' endings via a temporary file and an atomic rename."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
    os.replace(temporary, path)


def _label_line(spec: ImageSpec) -> str:
    return f"{spec.label_name}${spec.attr}${spec.text}"


def _prepare_out(config: SynthConfig) -> Path:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise TrafficRetrievalError(f"synth: {out} exists and is not a folder")
    layout = [out / name for name in (*SPLITS, "ground_truth")]
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise TrafficRetrievalError(f"synth: {out} is not empty; choose a new folder or overwrite it")
        for folder in layout:
            if folder.is_dir():
                shutil.rmtree(folder)
            elif folder.exists():
                folder.unlink()
    for split in SPLITS:
        if config.writes(split):
            _image_dir(out, split).mkdir(parents=True, exist_ok=True)
    (out / "ground_truth").mkdir(parents=True, exist_ok=True)
    return out


def _mean_relevant(queries: Sequence[ImageSpec], by_attr: dict[str, list[str]], category: str) -> float:
    counts = [len(by_attr[q.attr]) for q in queries if q.category == category]
    return float(np.mean(counts)) if counts else 0.0


def generate_dataset(config: SynthConfig, progress: bool = True) -> dict:
    """Writes the synthetic dataset (module docstring) and returns a summary: image
    counts and distinct ATTRs per split and category (the camera val split when it has images), mean relevant images per test
    query by category, and the seconds it took."""
    started = time.perf_counter()
    validate_config(config)
    plan = plan_dataset(config)
    out = _prepare_out(config)

    all_specs = [spec for split in SPLITS for spec in plan.specs[split]]
    _render_all(config, all_specs, progress)

    for split in (s for s in LABELLED_SPLITS if config.writes(s)):
        specs = plan.specs[split]
        ordered = sorted((s for s in specs if s.category == PEDESTRIAN), key=lambda s: s.name)
        ordered += [s for s in specs if s.category == VEHICLE]
        _write_text(out / split / f"{split}_label.txt", (_label_line(s) for s in ordered))
    gallery = plan.specs["test"]
    by_attr = relevant_images(gallery)
    _write_text(out / "test" / "test_text.txt", (q.text for q in plan.test_queries))
    _write_text(out / "ground_truth" / "test_gt.txt",
                ("$".join([q.text, *by_attr[q.attr]]) for q in plan.test_queries))
    _write_text(out / "ground_truth" / "test_label.txt", (_label_line(s) for s in gallery))
    recorded = {k: v for k, v in asdict(config).items() if k not in ("out", "workers", "overwrite")}
    recorded.update({f"{CAMERA_VAL_SPLIT}_{kind}": config.count(CAMERA_VAL_SPLIT, category)  # the counts used
                     for kind, category in (("pedestrians", PEDESTRIAN), ("vehicles", VEHICLE))})
    _write_text(out / "synth_config.json", [json.dumps(recorded, indent=2, sort_keys=True)])

    summary: dict = {"out": str(out), "seed": int(config.seed), "images": {}, "distinct_attrs": {}}
    for split in (s for s in SPLITS if config.writes(s)):
        summary["images"][split] = {
            c: sum(1 for s in plan.specs[split] if s.category == c) for c in (PEDESTRIAN, VEHICLE)}
        summary["distinct_attrs"][split] = {
            c: len({s.attr for s in plan.specs[split] if s.category == c}) for c in (PEDESTRIAN, VEHICLE)}
    summary["test_queries"] = len(plan.test_queries)
    summary["mean_relevant_per_query"] = {c: round(_mean_relevant(plan.test_queries, by_attr, c), 2)
                                          for c in (PEDESTRIAN, VEHICLE)}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
