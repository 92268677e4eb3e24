"""Attribute augmentation of vehicle captions: candidates, caption form, and the
``augment`` command end to end with a tiny random model (seconds)."""

import json
from pathlib import Path

import pytest

from traffic_retrieval.data.vocabulary import VehicleAttributes, VehicleVocabulary, parse_vehicle_attr
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.commands.augment import AugmentCaptionsConfig, format_report
from traffic_retrieval.commands.augment import run as augment_captions
from traffic_retrieval.train.attribute_augment import (
    augmented_caption,
    candidate_phrase,
    caption_frame,
    enumerate_candidates,
    format_caption,
    missing_fields,
    parse_label_fields,
    plan_augmentation,
)

CHALLENGE_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "challenge_text"
SMALL = VehicleVocabulary(colors=["orange", "white"], types=["SUV", "Truck"], brands=["Audi", "Balong Heavy Truck", "Golden Dragon"])


def parse(attr, vocabulary=SMALL):
    return parse_vehicle_attr(attr, vocabulary.types)


def phrases(attr, vocabulary=SMALL):
    return [candidate_phrase(c) for c in enumerate_candidates(parse(attr, vocabulary), vocabulary)]


# ---------------------------------------------------------------- candidates


def test_color_brand_label_gets_every_type():
    assert missing_fields(parse("white Audi.")) == ("type",)
    assert phrases("white Audi.") == ["white Audi SUV", "white Audi Truck"]


def test_type_only_label_gets_every_color_and_brand():
    assert missing_fields(parse("Truck.")) == ("color", "brand")
    assert phrases("Truck.") == [
        "orange Audi Truck", "orange Balong Heavy Truck Truck", "orange Golden Dragon Truck",
        "white Audi Truck", "white Balong Heavy Truck Truck", "white Golden Dragon Truck",
    ]


def test_brand_only_label_gets_every_color_and_type():
    assert missing_fields(parse("Balong Heavy Truck.")) == ("color", "type")
    assert phrases("Balong Heavy Truck.") == [
        "orange Balong Heavy Truck SUV", "orange Balong Heavy Truck Truck",
        "white Balong Heavy Truck SUV", "white Balong Heavy Truck Truck",
    ]


def test_color_type_and_complete_labels():
    assert phrases("white SUV.") == ["white Audi SUV", "white Balong Heavy Truck SUV", "white Golden Dragon SUV"]
    complete = VehicleAttributes(color="white", brand="Audi", type="SUV")
    assert missing_fields(complete) == () and enumerate_candidates(complete, SMALL) == [complete]


def test_a_complete_label_is_recognised():
    assert parse_label_fields("white Audi SUV.", SMALL) == VehicleAttributes("white", "Audi", "SUV")
    assert parse_label_fields("Balong Heavy Truck Truck.", SMALL) == VehicleAttributes(None, "Balong Heavy Truck", "Truck")
    assert parse_label_fields("Balong Heavy Truck.", SMALL) == VehicleAttributes(None, "Balong Heavy Truck", None)
    assert parse_label_fields("white Mystery SUV.", SMALL) == VehicleAttributes("white", "Mystery SUV", None)


def test_an_empty_vocabulary_list_leaves_the_field_missing():
    no_types = VehicleVocabulary(colors=["white"], types=[], brands=["Audi"])
    assert [candidate_phrase(c) for c in enumerate_candidates(VehicleAttributes(color="white", brand="Audi"), no_types)] == ["white Audi"]


# ---------------------------------------------------------------- caption form


@pytest.mark.parametrize(
    "text, attr, fields, expected",
    [
        ("This is a white Audi.", "white Audi.", ("white", "Audi", "Sedan"), "This is a white Audi Sedan."),
        ("A white Audi.", "white Audi.", ("white", "Audi", "SUV"), "A white Audi SUV."),
        ("An orange BMW.", "orange BMW.", ("orange", "BMW", "Sedan"), "An orange BMW Sedan."),
        ("This is an orange BMW.", "orange BMW.", ("orange", "BMW", "Sedan"), "This is an orange BMW Sedan."),
        ("A Truck.", "Truck.", ("white", "FOTON", "Truck"), "A white FOTON Truck."),
        ("A SUV.", "SUV.", ("orange", "Geely", "SUV"), "An orange Geely SUV."),
        ("This is a SUV.", "SUV.", ("orange", "Geely", "SUV"), "This is an orange Geely SUV."),
        ("This is a Bus.", "Bus.", ("green", "Yutong", "Bus"), "This is a green Yutong Bus."),
        ("A Balong Heavy Truck.", "Balong Heavy Truck.", ("red", "Balong Heavy Truck", "Truck"), "A red Balong Heavy Truck Truck."),
        ("This is a white Golden Dragon.", "white Golden Dragon.", ("white", "Golden Dragon", "Bus"), "This is a white Golden Dragon Bus."),
        ("This is a yellow XIALI", "yellow XIALI", ("yellow", "XIALI", "SUV"), "This is a yellow XIALI SUV"),
    ],
)
def test_augmented_caption_keeps_the_prefix_and_fixes_the_article(text, attr, fields, expected):
    color, brand, vehicle_type = fields
    assert augmented_caption(text, attr, VehicleAttributes(color, brand, vehicle_type)) == expected


def test_caption_frame_and_article_rules():
    assert caption_frame("This is a white Audi.", "white Audi.") == ("This is a ", ".")
    assert caption_frame("A Truck.", "Truck.") == ("A ", ".")
    # a text that does not contain its ATTR keeps a known opening and its period
    assert caption_frame("This is a car.", "white Audi.") == ("This is a ", ".")
    assert caption_frame("white car", "white Audi.") == ("", "")
    # only a following color (lower-case) changes the article; other prefixes stay
    assert format_caption("An ", "Audi SUV", ".") == "An Audi SUV."
    assert format_caption("A ", "orange Audi SUV", ".") == "An orange Audi SUV."
    assert format_caption("an ", "white Audi SUV", ".") == "a white Audi SUV."
    assert format_caption("The ", "orange Audi SUV", ".") == "The orange Audi SUV."


def test_plan_encodes_each_distinct_caption_once():
    rows = [
        {"image": "a.jpg", "category": "vehicle", "attr": "white Audi.", "text": "This is a white Audi."},
        {"image": "b.jpg", "category": "vehicle", "attr": "white Audi.", "text": "This is a white Audi."},
        {"image": "b.jpg", "category": "vehicle", "attr": "white Audi.", "text": "A white Audi."},
        {"image": "c.jpg", "category": "vehicle", "attr": "white Audi SUV.", "text": "A white Audi SUV."},
        {"image": "d.jpg", "category": "pedestrian", "attr": "0,1", "text": "A man."},
        {"image": "e.jpg", "category": "vehicle", "attr": "Truck.", "text": "A Truck."},
    ]
    plan = plan_augmentation(rows, SMALL)
    # "A white Audi Truck." completes both "A white Audi." and "A Truck.": encoded once
    assert len(plan.captions) == len(set(plan.captions)) == 2 + 2 + 6 - 1
    shared = plan.captions.index("A white Audi Truck.")
    assert sum(shared in group.caption_ids for group in plan.groups) == 2
    assert len(plan.groups) == 3 and plan.images == ["a.jpg", "b.jpg", "e.jpg"]
    assert plan.vehicle_rows == 5 and plan.complete_rows == 1
    assert plan.patterns == {"type": 3, "color+brand": 1}
    assert plan.row_reason == {3: "complete"} and plan.row_captions(0) == ["This is a white Audi SUV.", "This is a white Audi Truck."]


def test_bare_plan_groups_rows_by_known_fields_whatever_their_frame():
    rows = [
        {"image": "a.jpg", "category": "vehicle", "attr": "white Audi.", "text": "This is a white Audi."},
        {"image": "b.jpg", "category": "vehicle", "attr": "white Audi.", "text": "A white Audi"},
        {"image": "e.jpg", "category": "vehicle", "attr": "Truck.", "text": "A Truck."},
    ]
    plan = plan_augmentation(rows, SMALL, "bare")
    assert len(plan.groups) == 2 and plan.row_group[0] == plan.row_group[1]
    assert plan.row_captions(1) == ["white Audi SUV", "white Audi Truck"]
    assert plan.row_captions(2) == phrases("Truck.") and len(plan.captions) == 2 + 6 - 1


# ---------------------------------------------------------------- real texts


@pytest.fixture(scope="module")
def real_lines():
    if not CHALLENGE_TEXT.is_dir():
        pytest.skip("../shared/data/challenge_text is not present (only in the project's workspace)")
    vocabulary = VehicleVocabulary.from_json_dict(json.loads((CHALLENGE_TEXT / "vehicle_vocabulary.json").read_text(encoding="utf-8")))
    lines = (CHALLENGE_TEXT / "val_vehicle_labels_augmented.txt").read_text(encoding="utf-8").splitlines()
    return vocabulary, [line.split("$") for line in lines if line.strip()]


def test_the_seed_caption_is_among_our_candidates_for_every_real_label(real_lines):
    vocabulary, lines = real_lines
    assert len(vocabulary.colors) == 11 and len(vocabulary.types) == 6 and len(vocabulary.brands) == 65
    cache: dict[str, set[str]] = {}
    for _, attr, _, seed_caption in lines:
        if attr not in cache:
            cache[attr] = set(phrases(attr, vocabulary))
        assert seed_caption in cache[attr], (attr, seed_caption)
    assert len(lines) == 3371


def test_real_texts_get_the_seed_caption_with_their_prefix(real_lines):
    vocabulary, lines = real_lines
    articles_changed = 0
    for _, attr, text, seed_caption in lines:
        prefix, suffix = caption_frame(text, attr)
        assert prefix in ("A ", "An ", "This is a ", "This is an ") and suffix == ""  # this file drops the periods
        (seed_fields,) = [c for c in enumerate_candidates(parse(attr, vocabulary), vocabulary) if candidate_phrase(c) == seed_caption]
        lead = "This is " if prefix.startswith("This") else ""
        article = "an" if seed_caption[0] in "aeiou" else "a"
        expected = f"{lead}{article if lead else article.capitalize()} {seed_caption}"
        assert augmented_caption(text, attr, seed_fields) == expected
        articles_changed += prefix.split()[-1].lower() != article
    assert articles_changed > 0  # type-only "A SUV" texts that become "An orange ... SUV"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_work(tmp_path_factory):
    from traffic_retrieval.commands.prepare import PrepareConfig
    from traffic_retrieval.commands.prepare import run as prepare
    from traffic_retrieval.synth import SynthConfig, generate_dataset
    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    root = tmp_path_factory.mktemp("attribute_augment")
    data, work = root / "data", root / "work"
    generate_dataset(SynthConfig(out=data, seed=1, train_pedestrians=20, train_vehicles=30, val_pedestrians=4, val_vehicles=4,
                                 test_pedestrians=4, test_vehicles=4, workers=1), progress=False)
    prepare(PrepareConfig(data=data, work=work))
    checkpoint = root / "tiny.pt"
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), checkpoint)
    return work, checkpoint


def run_augment(work, checkpoint, out_manifest, **overrides):
    config = AugmentCaptionsConfig(work=work, checkpoint=checkpoint, out_manifest=out_manifest, workers=0, batch_size=16,
                                   device="cpu", precision="fp32", progress=False, **overrides)
    report = augment_captions(config)
    rows = [json.loads(line) for line in (work / "manifests" / f"{out_manifest}.jsonl").read_text(encoding="utf-8").splitlines()]
    return report, rows


@pytest.fixture(scope="module")
def first_run(tiny_work):
    work, checkpoint = tiny_work
    return run_augment(work, checkpoint, "aug_a")


def test_augment_end_to_end(tiny_work, first_run):
    work, _ = tiny_work
    vocabulary = VehicleVocabulary.load(work / "vehicle_vocabulary.json")
    original = [json.loads(line) for line in (work / "manifests" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    report, rows = first_run

    assert len(rows) == len(original) == report["rows_in"] == report["rows_out"] == 50
    assert report["vehicle_rows"] == 30 and report["unreadable"] == 0
    assert report["augmented"] == report["captions_changed"] == 30 - report["complete_vehicle_rows"] > 0
    assert sum(report["missing_patterns"].values()) == report["augmented"]
    assert json.loads((work / "augment_report.json").read_text())["rows_out"] == 50
    originals = [example["original"] for example in report["examples"]]
    assert 1 <= len(originals) <= 5 and len(set(originals)) == len(originals)
    assert all(example["augmented"] != example["original"] for example in report["examples"])
    assert report["score_margin"]["min"] >= 0 and report["score_margin"]["median"] >= report["score_margin"]["min"]

    for before, after in zip(original, rows):
        if before["category"] != "vehicle" or "augmented_from" not in after:
            assert after == before
            continue
        assert after["augmented_from"] == before["text"] and after["attr"] == before["attr"]
        assert {k: v for k, v in after.items() if k not in ("text", "augmented_from")} == {k: v for k, v in before.items() if k != "text"}
        known = parse_vehicle_attr(before["attr"], vocabulary.types)
        text = after["text"]
        for value in (known.color, known.brand, known.type):
            assert value is None or value in text
        assert text.endswith(".")
        assert sum(f" {color} " in f" {text} " for color in vocabulary.colors) == 1
        body = text[: -1].removeprefix("This is ").split(" ", 1)[1]  # drop the prefix and article
        matches = [c for c in enumerate_candidates(known, vocabulary) if candidate_phrase(c) == body]
        assert len(matches) == 1, text
        assert matches[0].brand in vocabulary.brands and matches[0].type in vocabulary.types and matches[0].color in vocabulary.colors


def test_augment_is_deterministic_and_keep_original_doubles_augmented_rows(tiny_work, first_run):
    work, checkpoint = tiny_work
    first_report, first = first_run
    _, second = run_augment(work, checkpoint, "aug_c")
    assert first == second
    report, kept = run_augment(work, checkpoint, "aug_d", keep_original=True)
    assert report["rows_out"] == len(kept) == first_report["rows_out"] + first_report["augmented"]
    augmented = [row for row in kept if "augmented_from" in row]
    originals = [row for row in kept if row["category"] == "vehicle" and "augmented_from" not in row]
    assert len(augmented) == first_report["augmented"]
    assert len(originals) == first_report["vehicle_rows"]
    assert [row for row in kept if "augmented_from" in row] == [row for row in first if "augmented_from" in row]


def test_augment_errors_name_the_path(tiny_work, tmp_path):
    work, checkpoint = tiny_work
    with pytest.raises(TrafficRetrievalError, match="missing.jsonl: manifest not found"):
        augment_captions(AugmentCaptionsConfig(work=work, checkpoint=checkpoint, manifest="missing", progress=False))
    empty_work = tmp_path / "work"
    (empty_work / "manifests").mkdir(parents=True)
    (empty_work / "manifests" / "train.jsonl").write_text("")
    with pytest.raises(TrafficRetrievalError, match="vehicle_vocabulary.json: vocabulary file not found"):
        augment_captions(AugmentCaptionsConfig(work=empty_work, checkpoint=checkpoint, progress=False))
    with pytest.raises(TrafficRetrievalError, match="--checkpoint"):
        augment_captions(AugmentCaptionsConfig(work=work, progress=False))


def test_bare_caption_form_writes_the_seeds_phrases(tiny_work, first_run, tmp_path):
    work, checkpoint = tiny_work
    vocabulary = VehicleVocabulary.load(work / "vehicle_vocabulary.json")
    candidates_out = tmp_path / "candidates.jsonl"
    report, rows = run_augment(work, checkpoint, "aug_bare", caption_form="bare", resize_mode="crop", candidates_out=candidates_out)
    assert report["caption_form"] == "bare" and report["resize_mode"] == "shortest"  # crop, in open_clip's words
    assert report["autocast"] == "fp32" and first_run[0]["resize_mode"] == "longest"  # unset: the checkpoint's own (pad)
    assert report["augmented"] == first_run[0]["augmented"] > 0
    augmented = [row for row in rows if "augmented_from" in row]
    assert len(augmented) == report["augmented"]
    for row in augmented:
        known = parse_vehicle_attr(row["attr"], vocabulary.types)
        assert row["text"] in [candidate_phrase(c) for c in enumerate_candidates(known, vocabulary)], row
        assert not row["text"].endswith(".") and not row["text"].startswith(("This is ", "A ", "An "))
        assert row["text"].split(" ")[0] in vocabulary.colors
    lines = [json.loads(line) for line in candidates_out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == report["vehicle_rows"] == report["candidates_out"]["vehicles"]
    chosen = {line["image"]: line["chosen"] for line in lines if line["candidates"]}
    assert all(line["chosen"] in line["candidates"] for line in lines if line["candidates"])
    assert {row["image"]: row["text"] for row in augmented} == chosen
    assert all(line["chosen"] is None and line["reason"] == "complete" for line in lines if not line["candidates"])
    assert f"candidates: {candidates_out}" in format_report(report)


def test_the_dry_run_lists_what_the_real_run_scores(tiny_work, tmp_path):
    work, checkpoint = tiny_work
    real_out, dry_out = tmp_path / "real.jsonl", tmp_path / "dry.jsonl"
    run_augment(work, checkpoint, "aug_sentence", candidates_out=real_out)
    augment_captions(AugmentCaptionsConfig(work=work, dry_run=True, candidates_out=dry_out))
    real = [json.loads(line) for line in real_out.read_text(encoding="utf-8").splitlines()]
    dry = [json.loads(line) for line in dry_out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in line.items() if k != "chosen"} for line in real] == dry


def test_unreadable_images_keep_their_row_and_are_counted(tiny_work, tmp_path):
    import shutil

    work, checkpoint = tiny_work
    other = tmp_path / "work"
    (other / "manifests").mkdir(parents=True)
    shutil.copy(work / "vehicle_vocabulary.json", other / "vehicle_vocabulary.json")
    rows = [json.loads(line) for line in (work / "manifests" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    vehicles = [row for row in rows if row["category"] == "vehicle" and "augmented_from" not in row]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    manifest = [dict(vehicles[0], image=str(broken)), *vehicles[1:4]]
    (other / "manifests" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in manifest))
    report, out = run_augment(other, checkpoint, "train_augmented")
    assert report["unreadable"] == 1 and len(report["unreadable_errors"]) == 1 and "broken.jpg" in report["unreadable_errors"][0]
    assert out[0] == manifest[0]
    assert report["augmented"] + report["complete_vehicle_rows"] + 1 == 4
