"""Bad label lines through ``prepare``: by default each is skipped, counted in the
report with ``file:line`` and its reason, and every valid line around it is kept;
with ``--strict`` the first one stops the run with a one-line error, exit 2."""

import json
import tracemalloc

import pytest

from traffic_retrieval.data.labels import iter_label_lines

FLAGS = ",".join(["1", "0", "1"] + ["0"] * 18)

BEFORE = "a.jpg$white Audi.$This is a white Audi."
AFTER = f"c.jpg${FLAGS}$A walking woman with glasses."
IMAGES = ("a.jpg", "b.jpg", "c.jpg")

BAD_LINES = {
    "missing_fields": ("b.jpg$white Audi.", "expected 3 '$'-separated fields IMAGE$ATTR$TEXT, found 2"),
    "image_only": ("b.jpg", "found 1"),
    "extra_dollar": ("b.jpg$white Audi.$This is$a white Audi.", "found 4"),
    "empty_text": ("b.jpg$white Audi.$   ", "empty TEXT field"),
    "empty_attr": ("b.jpg$ $A walking man.", "empty ATTR field"),
    "empty_image": ("$white Audi.$This is a white Audi.", "empty IMAGE field"),
    "20_flags": ("b.jpg$" + ",".join(["0"] * 20) + "$A man.", "pedestrian ATTR must have 21 flags, found 20"),
    "22_flags": ("b.jpg$" + ",".join(["0"] * 22) + "$A man.", "pedestrian ATTR must have 21 flags, found 22"),
    "flag_2": ("b.jpg$" + ",".join(["2"] + ["0"] * 20) + "$A man.", "pedestrian flags must be 0 or 1, found '2'"),
    "flag_minus_1": ("b.jpg$" + ",".join(["0"] * 20 + ["-1"]) + "$A man.", "found '-1'"),
    "flag_word": ("b.jpg$" + ",".join(["yes"] + ["0"] * 20) + "$A man.", "non-numeric items"),
    "color_without_vehicle": ("b.jpg$white.$A white car.", "has a color but no brand or type"),
    "latin1_bytes": (b"b.jpg$red BMW.$A caf\xe9 racer, a red BMW.", "not valid UTF-8 (byte 0xe9 at column 21)"),
    "gbk_bytes": (b"b.jpg$red BMW.$" + "一辆红色宝马".encode("gbk"), "not valid UTF-8 (byte 0x"),
    "duplicate_image_name": ("a.jpg$red BMW.$A red BMW.", "duplicate image name 'a.jpg' (first on line 1)"),
    "slash_in_name": ("train_images/b.jpg$red BMW.$A red BMW.", "must be a plain file name"),
    "backslash_in_name": ("train_images\\b.jpg$red BMW.$A red BMW.", "must be a plain file name"),
    "dotdot_name": ("..$red BMW.$A red BMW.", "must be a plain file name"),
    "dotdot_path": ("../../etc/b.jpg$red BMW.$A red BMW.", "must be a plain file name"),
    "blank_line": ("", "empty line"),
    "whitespace_line": (" \t ", "empty line"),
}


def read_manifest(work, split="train"):
    return [json.loads(line) for line in (work / "manifests" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_skipped_counted_and_valid_neighbours_kept(case, label_data, cli, tmp_path):
    line, reason = BAD_LINES[case]
    data = label_data([BEFORE, line, AFTER], IMAGES)
    work = tmp_path / "work"
    result = cli.ok("prepare", "--data", data, "--work", work)
    report = json.loads((work / "prepare_report.json").read_text(encoding="utf-8"))
    labels = data / "train" / "train_label.txt"
    assert report["skipped_lines"] == [{"source": f"{labels}:2", "reason": report["skipped_lines"][0]["reason"]}]
    assert reason in report["skipped_lines"][0]["reason"]
    assert report["splits"]["train"]["skipped_lines"] == 1 and report["splits"]["train"]["label_lines"] == 3
    assert [(row["name"], row["source"]) for row in read_manifest(work)] == [("a.jpg", f"{labels}:1"), ("c.jpg", f"{labels}:3")]
    assert f"skipped {labels}:2: " in result.out


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_strict_stops_at_the_bad_line_with_one_line_error(case, label_data, cli, tmp_path):
    line, reason = BAD_LINES[case]
    data = label_data([BEFORE, line, AFTER], IMAGES)
    cli.error(["prepare", "--data", data, "--work", tmp_path / "work", "--strict"], f"{data / 'train' / 'train_label.txt'}:2: ", reason)
    assert not (tmp_path / "work" / "manifests" / "train.jsonl").exists()


def test_utf8_bom_crlf_and_trailing_blank_lines_are_accepted(label_data, cli, tmp_path):
    raw = b"\xef\xbb\xbf" + f"{BEFORE}\r\nb.jpg$Truck.$This is a Truck.\r\n{AFTER}\r\n\r\n\n".encode()
    data = label_data(images=IMAGES, raw=raw)
    work = tmp_path / "work"
    cli.ok("prepare", "--data", data, "--work", work)
    rows = read_manifest(work)
    assert [row["name"] for row in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [row["text"] for row in rows] == ["This is a white Audi.", "This is a Truck.", "A walking woman with glasses."]
    assert json.loads((work / "prepare_report.json").read_text())["skipped_lines"] == []


def test_last_line_without_line_end_and_names_without_suffix_are_kept(label_data, cli, tmp_path):
    data = label_data(images=IMAGES, raw=f"{BEFORE}\nb${FLAGS}$A man.\nc$Truck.$A Truck.".encode())
    work = tmp_path / "work"
    cli.ok("prepare", "--data", data, "--work", work)
    assert [(row["name"], row["image"].rsplit("/", 1)[1]) for row in read_manifest(work)] == [("a.jpg", "a.jpg"), ("b", "b.jpg"), ("c", "c.jpg")]


def test_image_missing_on_disk_is_counted_with_its_line_and_strict_stops(label_data, cli, tmp_path):
    data = label_data([BEFORE, "missing.jpg$red BMW.$A red BMW.", AFTER], IMAGES)
    labels = data / "train" / "train_label.txt"
    work = tmp_path / "work"
    result = cli.ok("prepare", "--data", data, "--work", work)
    report = json.loads((work / "prepare_report.json").read_text())
    assert report["missing_images"] == [{"source": f"{labels}:2", "image": "missing.jpg"}]
    assert report["splits"]["train"]["missing_images"] == 1 and [r["name"] for r in read_manifest(work)] == ["a.jpg", "c.jpg"]
    assert "missing image 'missing.jpg'" in result.out
    cli.error(["prepare", "--data", data, "--work", tmp_path / "strict", "--strict"], f"{labels}:2: ", "image 'missing.jpg' not found")


def test_empty_label_file_is_a_one_line_error(label_data, cli, tmp_path):
    data = label_data([], IMAGES)
    cli.error(["prepare", "--data", data, "--work", tmp_path / "work"], f"{data / 'train' / 'train_label.txt'}: no usable training records")


def test_file_of_only_bad_lines_errors_but_writes_the_report(label_data, cli, tmp_path):
    data = label_data(["nonsense", b"\xff\xfe", "a.jpg$white.$A white car."], IMAGES)
    work = tmp_path / "work"
    cli.error(["prepare", "--data", data, "--work", work], "no usable training records", f"see {work / 'prepare_report.json'}")
    report = json.loads((work / "prepare_report.json").read_text())  # the error sends the user there: it exists
    assert [(s["source"].rsplit(":", 1)[1], s["reason"].split(" ")[0]) for s in report["skipped_lines"]] == [("1", "expected"), ("2", "not"), ("3", "vehicle")]


def test_empty_val_file_is_fine(label_data, cli, tmp_path):
    data = label_data([BEFORE, AFTER], IMAGES, val_lines=[])
    cli.ok("prepare", "--data", data, "--work", tmp_path / "work")
    assert json.loads((tmp_path / "work" / "prepare_report.json").read_text())["splits"]["val"]["label_lines"] == 0


def test_very_large_label_file_is_streamed(label_data, cli, tmp_path):
    lines = 200_000
    body = b"".join(b"img%06d.jpg$red BMW.$A red BMW parked on a road near the crossing number %d.\n" % (i, i) for i in range(lines))
    body = BEFORE.encode() + b"\n" + body + b"bad line\n" + AFTER.encode() + b"\n"
    data = label_data(images=IMAGES, raw=body)
    labels = data / "train" / "train_label.txt"
    assert labels.stat().st_size > 15_000_000

    # reading is line by line: the peak is a few lines, not the 15 MB file
    tracemalloc.start()
    count = sum(1 for _ in iter_label_lines(labels))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == lines + 3 and peak < 1_000_000, peak

    work = tmp_path / "work"
    cli.ok("prepare", "--data", data, "--work", work)
    stats = json.loads((work / "prepare_report.json").read_text())["splits"]["train"]
    assert stats["label_lines"] == lines + 3 and stats["skipped_lines"] == 1
    assert stats["missing_images"] == lines and stats["manifest_rows"] == 2
