"""``augment --dry-run``: the candidate captions each vehicle label would be scored with,
written without a model or images, from a label file (``--labels``) or the prepare
output (``--work``), in both caption forms; and the seed's own choices checked
against them on the real validation labels (when the project's workspace has them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from traffic_retrieval.cli import main as cli_main
from traffic_retrieval.commands.augment import AugmentCaptionsConfig, format_dry_run
from traffic_retrieval.commands.augment import run as augment
from traffic_retrieval.data.schema import VEHICLE_BRANDS, VEHICLE_COLORS, VEHICLE_TYPES
from traffic_retrieval.errors import TrafficRetrievalError

REPO = Path(__file__).resolve().parents[1]
SEED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "challenge_text" / "val_vehicle_labels_augmented.txt"
PEDESTRIAN_ATTR = ",".join(["0", "1"] * 10 + ["0"])  # 21 flags
TYPES = sorted(VEHICLE_TYPES)

LABELS = "\n".join([
    "audi.jpg$white Audi$This is a white Audi.",
    "truck.jpg$Truck$A Truck.",
    "hongyan.jpg$Hongyan$A Hongyan.",
    f"person.jpg${PEDESTRIAN_ATTR}$A woman with a backpack.",
    "complete.jpg$white Audi SUV$A white Audi SUV.",
    "audi2.jpg$white Audi$A white Audi.",
]) + "\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def dry_run(tmp_path: Path, caption_form: str = "bare", labels_text: str = LABELS, **overrides) -> tuple[dict, dict[str, dict]]:
    """Run a dry run over ``labels_text``; returns the report and the output lines by image."""
    labels = write(tmp_path / "labels.txt", labels_text)
    out = tmp_path / f"candidates_{caption_form}.jsonl"
    config = AugmentCaptionsConfig(dry_run=True, labels=labels, candidates_out=out, caption_form=caption_form, **overrides)
    report = augment(config)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return report, {line["image"]: line for line in lines}


# ---------------------------------------------------------------- --labels


def test_bare_dry_run_gives_the_seeds_candidate_sets(tmp_path):
    report, lines = dry_run(tmp_path, "bare")
    assert list(lines) == ["audi.jpg", "truck.jpg", "hongyan.jpg", "complete.jpg", "audi2.jpg"]  # file order, no pedestrian
    assert lines["audi.jpg"] == {"image": "audi.jpg", "attr": "white Audi.", "text": "This is a white Audi.",
                                 "candidates": [f"white Audi {vehicle_type}" for vehicle_type in TYPES]}
    # bare: one group per known fields, whatever the text's frame
    assert lines["audi2.jpg"]["candidates"] == lines["audi.jpg"]["candidates"]

    truck = lines["truck.jpg"]["candidates"]
    assert len(truck) == len(set(truck)) == len(VEHICLE_COLORS) * len(VEHICLE_BRANDS) == 11 * 65
    assert "red FAW Truck" in truck and "grey Balong Heavy Truck Truck" in truck
    assert truck[0] == "black Audi Truck" and all(caption.endswith(" Truck") for caption in truck)

    hongyan = lines["hongyan.jpg"]["candidates"]
    assert len(hongyan) == 11 * 6 and "green Hongyan Truck" in hongyan and hongyan[:2] == ["black Hongyan Bus", "black Hongyan Microbus"]

    assert lines["complete.jpg"]["candidates"] == [] and lines["complete.jpg"]["reason"] == "complete"
    assert all("reason" not in line for image, line in lines.items() if image != "complete.jpg")
    assert not any(caption.endswith(".") or caption.startswith(("This is", "A ")) for line in lines.values() for caption in line["candidates"])

    assert report["dry_run"] is True and report["caption_form"] == "bare"
    assert (report["lines"], report["vehicles"], report["pedestrians_skipped"], report["complete"], report["unfillable"]) == (6, 5, 1, 1, 0)
    # each distinct string once: "white Audi Truck" and the 11 "<color> Hongyan Truck" complete two labels each
    assert report["candidates"] == 6 + 715 + 66 + 0 + 6 and report["distinct_candidates"] == 6 + 715 + 66 - 1 - 11
    assert report["vocabulary"] == {"source": "published + label file", "colors": 11, "types": 6, "brands": 65}
    assert report["seed_choice"] is None and report["bad_lines"] == 0


def test_sentence_dry_run_keeps_each_labels_frame(tmp_path):
    report, lines = dry_run(tmp_path, "sentence")
    assert lines["audi.jpg"]["candidates"] == [f"This is a white Audi {vehicle_type}." for vehicle_type in TYPES]
    assert lines["audi2.jpg"]["candidates"] == [f"A white Audi {vehicle_type}." for vehicle_type in TYPES]
    truck = lines["truck.jpg"]["candidates"]
    assert len(truck) == 715 and "A red FAW Truck." in truck and "An orange Audi Truck." in truck
    assert "A green Hongyan Truck." in lines["hongyan.jpg"]["candidates"]
    assert all(caption.endswith(".") for line in lines.values() for caption in line["candidates"])
    assert report["caption_form"] == "sentence" and report["distinct_candidates"] == 6 + 6 + 715 + 66 - 1 - 11


def test_the_seeds_fourth_field_is_reported(tmp_path):
    labels = "a.jpg$white Audi$A white Audi$white Audi Sedan\nb.jpg$Truck$A Truck$magenta FAW Truck\nc.jpg$BMW$A BMW\n"
    report, lines = dry_run(tmp_path, "bare", labels)
    assert lines["a.jpg"]["seed_choice"] == "white Audi Sedan" and lines["a.jpg"]["seed_choice_among_candidates"] is True
    assert lines["b.jpg"]["seed_choice_among_candidates"] is False  # no such color in the vocabulary
    assert "seed_choice" not in lines["c.jpg"]
    assert report["seed_choice"] == {"lines": 2, "among_candidates": 1, "rate": 0.5}
    assert "seed choice among candidates 1/2 (50.00%)" in format_dry_run(report)
    # in sentence form the comparison is by phrase, so the rate is the same
    assert dry_run(tmp_path, "sentence", labels)[0]["seed_choice"]["among_candidates"] == 1


def test_a_given_vocabulary_replaces_the_published_one(tmp_path):
    vocabulary = write(tmp_path / "vocab.json", json.dumps({"Colors": ["red", "white"], "Types": [], "Brands": ["Audi", "Zotye"]}))
    labels = "a.jpg$white Audi$A white Audi.\nb.jpg$Truck$A Truck.\nc.jpg$Zotye$A Zotye.\n"
    report, lines = dry_run(tmp_path, "bare", labels, vocabulary=vocabulary)
    assert lines["a.jpg"] == {"image": "a.jpg", "attr": "white Audi.", "text": "A white Audi.", "candidates": [], "reason": "unfillable"}
    # with no types "Truck" reads as a brand: colors only
    assert lines["b.jpg"]["candidates"] == ["red Truck", "white Truck"]
    assert lines["c.jpg"]["candidates"] == ["red Zotye", "white Zotye"]
    assert report["unfillable"] == 1 and report["vocabulary"] == {"source": str(vocabulary), "colors": 2, "types": 0, "brands": 2}


def test_the_file_extends_the_published_vocabulary(tmp_path):
    labels = "a.jpg$Truck$A Truck.\nb.jpg$magenta Zotye$A magenta Zotye.\nc.jpg$white Audi SUV$A white Audi SUV.\n"
    report, lines = dry_run(tmp_path, "bare", labels)
    assert report["vocabulary"]["colors"] == 12 and report["vocabulary"]["brands"] == 66  # not "Audi SUV": that label is complete
    assert len(lines["a.jpg"]["candidates"]) == 12 * 66 and "magenta Zotye Truck" in lines["a.jpg"]["candidates"]
    assert lines["c.jpg"]["reason"] == "complete"


def test_bad_label_lines_are_skipped_and_named(tmp_path):
    labels = "a.jpg$white Audi$A white Audi.\nb.jpg$Truck\nc.jpg$white$A white.\nd.jpg$a$b$c$d\na.jpg$Truck$A Truck.\ne.jpg$BMW$A BMW.$\n"
    report, lines = dry_run(tmp_path, "bare", labels)
    assert list(lines) == ["a.jpg"] and report["lines"] == 6 and report["bad_lines"] == 5
    path = tmp_path / "labels.txt"
    errors = report["bad_line_errors"]
    assert errors[0] == f"{path}:2: expected 3 '$'-separated fields IMAGE$ATTR$TEXT (or 4 with the seed's AUGMENTED), found 2"
    assert errors[1].startswith(f"{path}:3: vehicle ATTR 'white' has a color but no brand or type")
    assert errors[2].startswith(f"{path}:4: expected 3 '$'-separated fields") and "found 5" in errors[2]
    assert errors[3] == f"{path}:5: duplicate image name 'a.jpg' (first on line 1)"
    assert errors[4].startswith(f"{path}:6: empty AUGMENTED field")
    assert "5 bad lines skipped" in format_dry_run(report) and f"skipped: {path}:2:" in format_dry_run(report)
    with pytest.raises(TrafficRetrievalError, match="no usable label lines"):
        dry_run(tmp_path, "bare", "b.jpg$Truck\n")


# ---------------------------------------------------------------- --work


def test_dry_run_over_the_prepare_output(tmp_path):
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    write(work / "vehicle_vocabulary.json", json.dumps({"colors": ["red", "white"], "types": ["SUV", "Sedan"], "brands": ["Audi", "BMW"]}))
    rows = [
        {"image": "a.jpg", "category": "vehicle", "attr": "white Audi.", "text": "This is a white Audi."},
        {"image": "b.jpg", "category": "vehicle", "attr": "white Audi.", "text": "A white Audi."},
        {"image": "p.jpg", "category": "pedestrian", "attr": PEDESTRIAN_ATTR, "text": "A man."},
        {"image": "c.jpg", "category": "vehicle", "attr": "SUV.", "text": "A SUV."},
    ]
    write(work / "manifests" / "train.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out" / "candidates.jsonl"
    report = augment(AugmentCaptionsConfig(dry_run=True, work=work, candidates_out=out, caption_form="bare"))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["image"] for line in lines] == ["a.jpg", "b.jpg", "c.jpg"]
    assert lines[0]["candidates"] == lines[1]["candidates"] == ["white Audi SUV", "white Audi Sedan"]
    assert lines[2]["candidates"] == ["red Audi SUV", "red BMW SUV", "white Audi SUV", "white BMW SUV"]
    assert report["distinct_candidates"] == 5 and report["pedestrians_skipped"] == 1 and report["lines"] == 4
    assert not (work / "augment_report.json").exists() and not (work / "manifests" / "train_augmented.jsonl").exists()
    sentence = augment(AugmentCaptionsConfig(dry_run=True, work=work, candidates_out=out))
    assert sentence["distinct_candidates"] == 2 + 2 + 4 - 1  # "A white Audi SUV." completes b.jpg and c.jpg
    assert json.loads(out.read_text().splitlines()[2])["candidates"][0] == "A red Audi SUV."


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"dry_run": True, "labels": "x.txt"}, "--dry-run needs --candidates-out"),
        ({"dry_run": True, "candidates_out": "o.jsonl"}, "exactly one of --work"),
        ({"dry_run": True, "candidates_out": "o.jsonl", "labels": "x.txt", "work": "w"}, "exactly one of --work"),
        ({"labels": "x.txt", "model": "RN50"}, "--labels is for --dry-run"),
        ({"work": "w", "vocabulary": "v.json", "model": "RN50"}, "--vocabulary goes with --labels"),
        ({"dry_run": True, "candidates_out": "o.jsonl", "work": "w", "manifest": "../x"}, "manifest must be a manifest name"),
        ({"work": "w"}, "--checkpoint"),
    ],
)
def test_config_errors(settings, message):
    values = {key: Path(value) if key in ("labels", "work", "candidates_out", "vocabulary") else value for key, value in settings.items()}
    with pytest.raises(TrafficRetrievalError, match=message):
        augment(AugmentCaptionsConfig(**values))


# ---------------------------------------------------------------- the CLI


def test_cli_dry_run_writes_the_file_without_importing_torch(tmp_path):
    labels = write(tmp_path / "labels.txt", LABELS)
    out = tmp_path / "candidates.jsonl"
    code = (
        "import sys\n"
        "from traffic_retrieval.cli import main\n"
        f"status = main(['augment', '--dry-run', '--labels', {str(labels)!r}, '--candidates-out', {str(out)!r}, '--caption-form', 'bare'])\n"
        "print('torch imported:', 'torch' in sys.modules, 'open_clip imported:', 'open_clip' in sys.modules)\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False open_clip imported: False" in result.stdout
    summary = result.stdout.splitlines()[0]
    assert summary == (f"dry run (bare): 6 lines, 5 vehicles, 793 candidates (775 distinct), 1 pedestrians skipped, "
                       f"1 complete, 0 unfillable -> {out}")
    assert len(out.read_text().splitlines()) == 5


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["augment", "--dry-run", "--labels", str(tmp_path / "missing.txt"), "--candidates-out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.txt'}: label file not found\n"
    assert cli_main(["augment", "--dry-run", "--labels", str(write(tmp_path / "l.txt", LABELS))]) == 2
    assert "--candidates-out" in capsys.readouterr().err


# ---------------------------------------------------------------- the seed's real labels


def test_the_seeds_choice_is_among_our_bare_candidates_on_the_real_labels(tmp_path, capsys):
    if not SEED_LABELS.is_file():
        pytest.skip(f"{SEED_LABELS} is not present (only in the project's workspace)")
    out = tmp_path / "seed_candidates.jsonl"
    assert cli_main(["augment", "--dry-run", "--labels", str(SEED_LABELS), "--caption-form", "bare", "--candidates-out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3371 and all("seed_choice" in line for line in lines)
    hits = sum(line["seed_choice"] in line["candidates"] for line in lines)  # the exact strings, not phrases
    rate = hits / len(lines)
    assert rate >= 0.99, f"seed choice among our bare candidates for {hits}/{len(lines)} lines ({100 * rate:.2f}%)"
    assert hits == sum(line["seed_choice_among_candidates"] for line in lines)
    assert f"seed choice among candidates {hits}/{len(lines)} ({100 * rate:.2f}%)" in printed, printed
