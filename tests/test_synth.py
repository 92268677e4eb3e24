"""The synthetic dataset generator: layout, determinism, labels, images, ground truth,
and the caption grammar against the challenge's real texts (when ../shared exists)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traffic_retrieval.data.schema import PEDESTRIAN_FLAGS, VEHICLE_BRANDS, VEHICLE_COLORS, VEHICLE_TYPES
from traffic_retrieval.synth.generate import (
    SynthConfig,
    generate_dataset,
    plan_dataset,
    relevant_images,
    sample_pedestrian_flags,
)
from traffic_retrieval.synth.captions import (
    flags_to_dict,
    pedestrian_caption,
    pedestrian_caption_regex,
    vehicle_text_variants,
)
from traffic_retrieval.synth.draw import brand_emblem
from traffic_retrieval.data.vocabulary import parse_vehicle_attr
from traffic_retrieval.errors import TrafficRetrievalError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_TEXTS = SHARED / "data" / "challenge_text"

SMALL = dict(train_pedestrians=24, train_vehicles=16, val_pedestrians=8, val_vehicles=8,
             test_pedestrians=24, test_vehicles=16)
FLAG_INDEX = {name: i for i, name in enumerate(PEDESTRIAN_FLAGS)}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _label_lines(path: Path) -> list[list[str]]:
    return [line.split("$") for line in path.read_text(encoding="utf-8").split("\n") if line]


def _is_pedestrian_attr(attr: str) -> bool:
    return len(attr.split(",")) == len(PEDESTRIAN_FLAGS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(SynthConfig(out=out, seed=3, workers=1, **SMALL), progress=False)
    return out


def test_layout_and_counts(dataset: Path):
    for path in ("train/train_label.txt", "val/val_label.txt", "test/test_text.txt",
                 "ground_truth/test_gt.txt", "ground_truth/test_label.txt", "synth_config.json"):
        assert (dataset / path).is_file(), path
    raw = (dataset / "train/train_label.txt").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    all_names = []
    for split, n_ped, n_veh in (("train", 24, 16), ("val", 8, 8)):
        lines = _label_lines(dataset / split / f"{split}_label.txt")
        peds = [l for l in lines if _is_pedestrian_attr(l[1])]
        vehs = [l for l in lines if not _is_pedestrian_attr(l[1])]
        assert (len(peds), len(vehs)) == (n_ped, n_veh)
        assert all(re.fullmatch(r"\d{6}", l[0]) for l in peds)  # no extension, like the real data
        assert all(re.fullmatch(r"[a-z]{10}\.jpg", l[0]) for l in vehs)
        files = {p.name for p in (dataset / split / f"{split}_images").iterdir()}
        names = {l[0] if l[0].endswith(".jpg") else l[0] + ".jpg" for l in lines}
        assert files == names
        all_names += sorted(names)
    gallery = _label_lines(dataset / "ground_truth/test_label.txt")
    assert len(gallery) == 40
    assert all(re.fullmatch(r"(\d{6}|[a-z]{10})\.jpg", l[0]) for l in gallery)
    assert {p.name for p in (dataset / "test/test_images").iterdir()} == {l[0] for l in gallery}
    all_names += [l[0] for l in gallery]
    assert len(all_names) == len(set(all_names)), "image names must be unique across splits"
    assert len((dataset / "test/test_text.txt").read_text(encoding="utf-8").split("\n")[:-1]) == 40
    assert json.loads((dataset / "synth_config.json").read_text())["seed"] == 3


def test_same_seed_is_byte_identical_for_any_worker_count(dataset: Path, tmp_path: Path):
    other = tmp_path / "two_workers"
    generate_dataset(SynthConfig(out=other, seed=3, workers=2, **SMALL), progress=False)
    assert _hashes(dataset) == _hashes(other)


def test_different_seed_differs(dataset: Path, tmp_path: Path):
    other = tmp_path / "seed4"
    generate_dataset(SynthConfig(out=other, seed=4, workers=1, **SMALL), progress=False)
    assert (other / "train/train_label.txt").read_bytes() != (dataset / "train/train_label.txt").read_bytes()
    first = sorted((dataset / "test/test_images").iterdir())[0].read_bytes()
    assert all(p.read_bytes() != first for p in (other / "test/test_images").iterdir())


def _check_flags(attr: str) -> None:
    values = attr.split(",")
    assert len(values) == 21 and set(values) <= {"0", "1"}, attr
    flags = dict(zip(PEDESTRIAN_FLAGS, map(int, values)))
    assert flags["AgeOver60"] + flags["Age18-60"] + flags["AgeLess18"] == 1
    assert flags["Front"] + flags["Side"] + flags["Back"] == 1
    assert flags["ShortSleeve"] + flags["LongSleeve"] == 1
    assert not (flags["Glasses"] and flags["Back"])
    assert not (flags["LongCoat"] and flags["ShortSleeve"])


def test_label_lines_are_well_formed(dataset: Path):
    paths = [dataset / "train/train_label.txt", dataset / "val/val_label.txt", dataset / "ground_truth/test_label.txt"]
    for path in paths:
        for fields in _label_lines(path):
            assert len(fields) == 3, fields
            name, attr, text = fields
            if _is_pedestrian_attr(attr):
                _check_flags(attr)
                assert pedestrian_caption_regex().fullmatch(text), text
                female = attr.split(",")[0] == "1"
                assert text.split(". ")[1].startswith("She" if female else "He")
            else:
                assert attr.endswith(".")
                parsed = parse_vehicle_attr(attr)
                assert (parsed.color, parsed.brand, parsed.type) != (None, None, None), attr
                assert parsed.color in (None, *VEHICLE_COLORS)
                assert parsed.brand in (None, *VEHICLE_BRANDS)
                assert parsed.type in (None, *VEHICLE_TYPES)
                assert text in vehicle_text_variants(attr), (attr, text)


def test_crop_shapes(dataset: Path):
    gallery = {l[0]: l[1] for l in _label_lines(dataset / "ground_truth/test_label.txt")}
    for split in ("train", "val", "test"):
        if split == "test":
            labels = gallery
        else:
            labels = {(l[0] if l[0].endswith(".jpg") else l[0] + ".jpg"): l[1]
                      for l in _label_lines(dataset / split / f"{split}_label.txt")}
        for name, attr in labels.items():
            with Image.open(dataset / split / f"{split}_images" / name) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                width, height = image.size
            if _is_pedestrian_attr(attr):
                assert 1.8 <= height / width <= 3.2, (name, image.size)
            else:
                assert 1.3 <= width / height <= 2.1, (name, image.size)


def test_ground_truth_matches_queries_and_labels(dataset: Path):
    texts = (dataset / "test/test_text.txt").read_text(encoding="utf-8").split("\n")[:-1]
    gt_lines = (dataset / "ground_truth/test_gt.txt").read_text(encoding="utf-8").split("\n")[:-1]
    gt = [line.split("$") for line in gt_lines]
    gallery = _label_lines(dataset / "ground_truth/test_label.txt")
    attr_of = {name: attr for name, attr, _ in gallery}
    assert len(gt) == len(texts) == len(gallery)
    # Every gallery image is the source of exactly one query, in a shuffled order.
    assert Counter(texts) == Counter(text for _, _, text in gallery)
    assert texts != [text for _, _, text in gallery]
    sources = Counter()
    for query, (text, *relevant) in zip(texts, gt):
        assert text == query
        assert relevant and len(set(relevant)) == len(relevant)
        attrs = {attr_of[name] for name in relevant}
        assert len(attrs) == 1
        (attr,) = attrs
        assert set(relevant) == {name for name, a in attr_of.items() if a == attr}
        assert any(text == t and name in relevant for name, _, t in gallery)
        sources[attr] += 1
    assert sources == Counter(attr for _, attr, _ in gallery)


def test_attribute_combinations_repeat():
    plan = plan_dataset(SynthConfig(out=Path("unused"), seed=0, train_pedestrians=0, train_vehicles=0,
                                    val_pedestrians=0, val_vehicles=0, test_pedestrians=800, test_vehicles=400))
    by_attr = relevant_images(plan.specs["test"])
    pedestrian = [len(by_attr[q.attr]) for q in plan.test_queries if _is_pedestrian_attr(q.attr)]
    vehicle = [len(by_attr[q.attr]) for q in plan.test_queries if not _is_pedestrian_attr(q.attr)]
    assert 5 < np.mean(pedestrian) < 20
    assert np.mean(vehicle) > 1


def test_flag_sampler_is_consistent_and_skewed():
    rng = np.random.default_rng(0)
    samples = np.array([sample_pedestrian_flags(rng) for _ in range(3000)])
    for row in samples[:500]:
        _check_flags(",".join(map(str, row)))
    mean = dict(zip(PEDESTRIAN_FLAGS, samples.mean(axis=0)))
    assert 0.38 < mean["Female"] < 0.52
    assert mean["Age18-60"] > 0.85 and mean["AgeOver60"] < 0.05 and mean["Hat"] < 0.1
    assert 0.1 < mean["Glasses"] < 0.3
    assert (samples[:, 15:19].sum(axis=1) > 1).mean() < 0.05


def test_vehicle_label_forms_and_brand_types():
    plan = plan_dataset(SynthConfig(out=Path("unused"), seed=1, train_pedestrians=0, train_vehicles=4000,
                                    val_pedestrians=0, val_vehicles=0, test_pedestrians=0, test_vehicles=0))
    vehicles = plan.specs["train"]
    forms = Counter("type" if v.attr[:-1] in VEHICLE_TYPES else "color" if v.attr[0].islower() else "brand"
                    for v in vehicles)
    assert 0.8 < forms["color"] / len(vehicles) < 0.9
    assert 0.1 < forms["type"] / len(vehicles) < 0.18
    assert 0.003 < forms["brand"] / len(vehicles) < 0.03
    for v in vehicles:
        color, brand, vehicle_type = v.vehicle
        if brand in ("Yutong", "Golden Dragon", "KINGLONG"):
            assert vehicle_type in ("Bus", "Microbus")
        if brand in ("Balong Heavy Truck", "Shacman", "Hongyan"):
            assert vehicle_type == "Truck"
        if v.attr[0].islower():
            assert v.attr == f"{color} {brand}."
    brands = Counter(v.vehicle[1] for v in vehicles)
    assert max(brands.values()) > 3 * min(brands.values())  # skewed popularity


def test_brand_emblems_are_unique():
    keys = {(e["plate"], e["symbol"]) for e in map(brand_emblem, VEHICLE_BRANDS)}
    assert len(keys) == len(VEHICLE_BRANDS)


def test_bad_input_raises_one_line_errors(tmp_path: Path):
    with pytest.raises(TrafficRetrievalError):
        generate_dataset(SynthConfig(out=tmp_path / "a", train_pedestrians=-1), progress=False)
    with pytest.raises(TrafficRetrievalError):
        generate_dataset(SynthConfig(out=tmp_path / "a", workers=0), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    tiny = dict(train_pedestrians=1, train_vehicles=1, val_pedestrians=0, val_vehicles=0,
                test_pedestrians=1, test_vehicles=1)
    with pytest.raises(TrafficRetrievalError, match="not empty"):
        generate_dataset(SynthConfig(out=tmp_path / "busy", workers=1, **tiny), progress=False)
    summary = generate_dataset(SynthConfig(out=tmp_path / "busy", workers=1, overwrite=True, **tiny), progress=False)
    assert (tmp_path / "busy" / "keep.txt").exists()  # only the dataset's own folders are replaced
    assert summary["images"]["test"] == {"pedestrian": 1, "vehicle": 1}


# ----------------------------------------------------------------- real challenge texts

def _real_captions() -> list[str]:
    path = REAL_TEXTS / "val_person_captions.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared is absent)")
    return [line.split("\t", 1)[1] for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def _generated_captions(count: int = 20000) -> list[str]:
    rng = np.random.default_rng(7)
    return [pedestrian_caption(flags_to_dict(sample_pedestrian_flags(rng)), rng, boots=rng.random() < 0.05)
            for _ in range(count)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9-]+", text))


def test_generated_words_occur_in_real_captions():
    real_vocabulary = set().union(*map(_words, _real_captions()))
    generated_vocabulary = set().union(*map(_words, _generated_captions(3000)))
    assert generated_vocabulary <= real_vocabulary, generated_vocabulary - real_vocabulary


def test_grammar_covers_real_captions_and_their_variants():
    real = _real_captions()
    pattern = pedestrian_caption_regex()
    matches = [pattern.fullmatch(text) for text in real]
    assert sum(m is not None for m in matches) / len(real) > 0.99

    def phrases(found) -> set[tuple[str, str]]:
        pairs = set()
        for m in found:
            if m is None:
                continue
            for group, value in m.groupdict().items():
                if value is not None:
                    pairs.add((group, value))
        return pairs

    generated = _generated_captions()
    generated_matches = [pattern.fullmatch(text) for text in generated]
    assert all(m is not None for m in generated_matches)
    real_phrases, generated_phrases = phrases(matches), phrases(generated_matches)
    assert len(real_phrases & generated_phrases) / len(real_phrases) > 0.95, real_phrases - generated_phrases
    # Whole second sentences ("She is in a tee shirt with short sleeves with an upper stripe...").
    real_second = Counter(text.split(". ", 1)[1] for text in real)
    frequent = {s for s, n in real_second.items() if n >= 5}
    generated_second = {text.split(". ", 1)[1] for text in generated}
    assert len(frequent & generated_second) / len(frequent) > 0.9, frequent - generated_second


def test_vehicle_texts_match_real_forms():
    path = REAL_TEXTS / "val_vehicle_labels_augmented.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared is absent)")
    lines = [line.split("$") for line in path.read_text(encoding="utf-8").splitlines() if line]
    # The file's ATTR and TEXT lack the final period.
    for _, attr, text, *_ in lines:
        assert text + "." in vehicle_text_variants(attr + "."), (attr, text)
    real_forms = {text.replace(attr, "<ATTR>") + "." for _, attr, text, *_ in lines}
    plan = plan_dataset(SynthConfig(out=Path("unused"), seed=2, train_pedestrians=0, train_vehicles=2000,
                                    val_pedestrians=0, val_vehicles=0, test_pedestrians=0, test_vehicles=0))
    vocabulary = json.loads((REAL_TEXTS / "vehicle_vocabulary.json").read_text(encoding="utf-8"))
    colorless = {attr + "." for _, attr, *_ in lines if not attr[0].islower()}  # "Truck", "Hongyan", ...
    for spec in plan.specs["train"]:
        assert spec.text.replace(spec.attr[:-1], "<ATTR>") in real_forms, spec.text
        parsed = parse_vehicle_attr(spec.attr)
        if parsed.color is None:
            assert spec.attr in colorless, spec.attr
        else:
            assert parsed.color in vocabulary["Colors"] and parsed.brand in vocabulary["Brands"], spec.attr
