"""Files from someone else (issue 12): a gallery image, a label file or a vocabulary
JSON may be malformed or hostile. Each is refused with a one-line error naming the
file (and line or key), or skipped and counted; never a traceback, never a whole
build lost to one file, never raw terminal control characters on the user's screen.
The dependency floors exclude releases with known vulnerabilities in what we use."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import tomllib
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from traffic_retrieval.data.images import PreprocessConfig, load_image, read_image_batches
from traffic_retrieval.data.labels import iter_label_lines, read_label_file
from traffic_retrieval.data.vocabulary import VehicleVocabulary
from traffic_retrieval.errors import TrafficRetrievalError

REPO = Path(__file__).resolve().parents[2]
FLAGS = ",".join(["1", "0", "1"] + ["0"] * 18)
GOOD_LINE = "a.jpg$white Audi.$This is a white Audi."
LAST_LINE = f"c.jpg${FLAGS}$A walking woman with glasses."
# what a terminal acts on: C0 controls (ESC, BEL, CR), DEL, C1 controls (CSI), bidi overrides
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# --- helpers -----------------------------------------------------------------------


def jpeg_with_exif(entries, size=(24, 16)) -> bytes:
    """A real JPEG whose APP1 EXIF block holds the given IFD0 entries (tag, type, count, 4-byte value)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "JPEG")
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        tiff += struct.pack("<HHI", tag, kind, count) + value
    tiff += struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    data = buffer.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


ORIENTATION_6 = (0x0112, 3, 1, b"\x06\x00\x00\x00")  # "rotate 90 degrees clockwise": exif_transpose rewrites the EXIF
MALFORMED_EXIF = {
    # YCbCrPositioning as a signed byte of -1: rewriting it as an unsigned short raises struct.error
    "struct_error": [ORIENTATION_6, (0x0213, 6, 1, b"\xff\xff\xff\x7f")],
    # XResolution as ASCII text: rewriting it as a rational raises TypeError
    "type_error": [ORIENTATION_6, (0x011A, 2, 3, b"\xff\xff\xff\x7f")],
}


def good_jpeg(path: Path, color=(10, 200, 30)) -> Path:
    Image.new("RGB", (20, 12), color).save(path, "JPEG")
    return path


def assert_one_line_image_error(error: str, path: Path):
    assert error.startswith(f"{path}: ") and "\n" not in error and len(error) < len(str(path)) + 300, error


def decode_all(paths):
    batches = list(read_image_batches(paths, PreprocessConfig(size=16), batch_size=2, workers=0))
    readable = [position for batch in batches for position in batch.readable]
    errors = {position: error for batch in batches for position, error in batch.errors.items()}
    return readable, errors


def run_cli(capsys, *argv):
    from traffic_retrieval.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def challenge_data(root: Path, label_bytes: bytes, images=("a.jpg", "c.jpg")) -> Path:
    for split in ("train", "val"):
        (root / split / f"{split}_images").mkdir(parents=True, exist_ok=True)
    for name in images:
        good_jpeg(root / "train" / "train_images" / name)
    (root / "train" / "train_label.txt").write_bytes(label_bytes)
    return root


# --- finding 7: one odd image never aborts a build ------------------------------------


@pytest.mark.parametrize("case", sorted(MALFORMED_EXIF))
def test_jpeg_with_malformed_exif_orientation_block_is_counted_unreadable(case, tmp_path):
    bad = tmp_path / f"{case}.jpg"
    bad.write_bytes(jpeg_with_exif(MALFORMED_EXIF[case]))
    with pytest.raises(TrafficRetrievalError) as error:
        load_image(bad)
    assert_one_line_image_error(str(error.value), bad)

    paths = [good_jpeg(tmp_path / "first.jpg"), bad, good_jpeg(tmp_path / "last.jpg")]
    readable, errors = decode_all(paths)
    assert readable == [0, 2] and list(errors) == [1]
    assert_one_line_image_error(errors[1], bad)


def test_any_exif_failure_is_counted_unreadable_in_the_reader_and_thumbnails(tmp_path, monkeypatch):
    from traffic_retrieval.serve.thumbnails import ThumbnailCache

    paths = [good_jpeg(tmp_path / f"{index}.jpg") for index in range(4)]
    real = ImageOps.exif_transpose

    def exif_transpose(image, **kwargs):
        if Path(image.filename).name in ("1.jpg", "2.jpg"):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real(image, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", exif_transpose)
    readable, errors = decode_all(paths)
    assert readable == [0, 3] and sorted(errors) == [1, 2]
    for position in (1, 2):
        assert_one_line_image_error(errors[position], paths[position])
        assert "cannot read image" in errors[position]

    cache = ThumbnailCache(size=16)
    assert cache.get(0, paths[0]).startswith(b"\xff\xd8")
    with pytest.raises(TrafficRetrievalError) as error:
        cache.get(1, paths[1])
    assert_one_line_image_error(str(error.value), paths[1])


def test_memory_error_is_not_disguised_as_an_unreadable_image(tmp_path, monkeypatch):
    path = good_jpeg(tmp_path / "a.jpg")

    def exif_transpose(image, **kwargs):
        raise MemoryError

    monkeypatch.setattr(ImageOps, "exif_transpose", exif_transpose)
    with pytest.raises(MemoryError):
        load_image(path)


def test_decompression_bomb_check_leaves_warning_filters_alone(tmp_path, monkeypatch):
    """``warnings.catch_warnings`` swaps process-wide state: with thumbnails decoded in
    threads, one thread's restore can drop or keep another's filter. The pixel limit is
    checked explicitly instead."""
    import warnings

    calls: list[str] = []
    real_catch_warnings, real_simplefilter = warnings.catch_warnings, warnings.simplefilter

    class SpyCatchWarnings(real_catch_warnings):
        def __init__(self, *args, **kwargs):
            calls.append("catch_warnings")
            super().__init__(*args, **kwargs)

    def spy_simplefilter(*args, **kwargs):
        calls.append("simplefilter")
        return real_simplefilter(*args, **kwargs)

    def load(path):
        monkeypatch.setattr(warnings, "catch_warnings", SpyCatchWarnings)
        monkeypatch.setattr(warnings, "simplefilter", spy_simplefilter)
        try:
            return load_image(path)
        finally:
            monkeypatch.setattr(warnings, "catch_warnings", real_catch_warnings)
            monkeypatch.setattr(warnings, "simplefilter", real_simplefilter)
            assert calls == [], f"load_image changed the warning filters: {calls}"

    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1x and 2x: PIL itself only warns
    with pytest.raises(TrafficRetrievalError, match="image is too large"):
        load(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 2x: PIL raises
    with pytest.raises(TrafficRetrievalError, match="image is too large"):
        load(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    assert load(big).size == (64, 64)


def test_load_image_from_many_threads_refuses_every_bomb_and_reads_every_image(tmp_path, monkeypatch):
    import warnings

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(big)
    Image.new("RGB", (32, 32)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    filters_before = list(warnings.filters)
    outcomes: list[str] = []

    def work():
        for _ in range(25):
            try:
                outcomes.append(f"ok {load_image(small).size}")
                load_image(big)
                outcomes.append("bomb read")
            except TrafficRetrievalError as exc:
                outcomes.append("refused" if "too large" in str(exc) else str(exc))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) == ["ok (32, 32)", "refused"] and len(outcomes) == 8 * 25 * 2
    assert warnings.filters == filters_before


# --- finding 13: label files with huge lines, huge values, terminal controls -----------


def test_label_line_without_line_ends_is_skipped_as_too_long_in_bounded_memory(tmp_path):
    path = tmp_path / "train_label.txt"
    huge = b"x" * 10_000_000
    path.write_bytes(GOOD_LINE.encode() + b"\n" + huge + b"$white Audi.$" + huge + b"\n" + LAST_LINE.encode() + b"\n")
    tracemalloc.start()
    lines = list(iter_label_lines(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert [number for number, _ in lines] == [1, 2, 3]
    records, errors = read_label_file(path)
    assert [r.image_name for r in records] == ["a.jpg", "c.jpg"]
    assert [(e.path, e.line_number) for e in errors] == [(str(path), 2)]
    assert "line too long" in errors[0].reason and len(str(errors[0])) < len(str(path)) + 120

    whole = tmp_path / "one_line.txt"
    whole.write_bytes(huge)  # a file with no line end at all
    tracemalloc.start()
    records, errors = read_label_file(whole)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert records == [] and [(e.line_number, "line too long" in e.reason) for e in errors] == [(1, True)]


def test_lines_at_the_length_limit(tmp_path):
    from traffic_retrieval.data.labels import MAX_LINE_BYTES

    text = "A red BMW."
    fits = f"a.jpg$red BMW.${text}" + "." * (MAX_LINE_BYTES - len(text) - 15)
    assert len(fits.encode()) == MAX_LINE_BYTES
    path = tmp_path / "train_label.txt"
    path.write_bytes(f"{fits}\r\nb.jpg$red BMW.${text}.{'.' * (MAX_LINE_BYTES - 15)}\r\n{LAST_LINE}".encode())
    records, errors = read_label_file(path)
    assert [r.image_name for r in records] == ["a.jpg", "c.jpg"]
    assert [(e.line_number, "line too long" in e.reason) for e in errors] == [(2, True)]


def test_echoed_values_are_shortened_in_errors(tmp_path):
    path = tmp_path / "train_label.txt"
    long_color = "w" * 60_000  # a lower-case first word alone: "a color but no brand or type", echoed
    long_name = "n" * 200 + ".jpg"  # a legal length for a file name, echoed as a duplicate
    over_name = "o" * 300 + ".jpg"  # no file system has such a name
    path.write_text(f"b.jpg${long_color}.$A car.\n{long_name}$red BMW.$A red BMW.\n{long_name}$red BMW.$A red BMW.\n"
                    f"{over_name}$red BMW.$A red BMW.\n", encoding="utf-8")
    records, errors = read_label_file(path)
    assert [r.image_name for r in records] == [long_name]
    assert [e.line_number for e in errors] == [1, 3, 4]
    for error in errors:
        assert len(error.reason) < 200 and "…" in error.reason, error.reason
    assert "longer than 255 bytes" in errors[2].reason


def test_prepare_report_escapes_terminal_controls_and_shortens_names(tmp_path, capsys):
    data = tmp_path / "da\x1b[2Jta"  # a data folder (and so every file:line) with an escape sequence in its name
    lines = [GOOD_LINE, "\x1b]0;owned\x07b\x9bc.jpg$red BMW.$A red BMW.", "m" * 200 + ".jpg$red BMW.$A red BMW.",
             "bad\u202eline without fields", LAST_LINE]
    challenge_data(data, "\n".join(lines).encode() + b"\n")
    code, out, err = run_cli(capsys, "prepare", "--data", data, "--work", tmp_path / "work")
    assert code == 0, err
    assert not TERMINAL_CONTROLS.search(out), out
    assert "skipped " in out and "\\x1b[2J" in out and "missing image " in out and "\\x9b" in out
    assert "m" * 80 + "…" in out and "m" * 81 not in out
    report = json.loads((tmp_path / "work" / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["splits"]["train"]["missing_images"] == 2 and report["splits"]["train"]["skipped_lines"] == 1


def test_predict_prints_unreadable_image_errors_escaped(capsys):
    from traffic_retrieval.commands.predict import PredictConfig, print_result

    summary = {"submission": "out.json", "queries": 2, "gallery_images": 3, "gallery_per_category": {"vehicle": 3},
               "empty_queries": 0, "truncated_queries": 0, "context_length": 77, "contact_sheet": None,
               "query_recipe": {"text_form": "sentence", "router": "vocabulary", "gallery_scope": "routed"}, "queries_per_category": {"vehicle": 2},
               "unreadable_images": ["/g/\x1b[2J\x1b]0;owned\x07x\u202ejpg.exe: cannot read image (bad \x9b data)"]}
    print_result(summary, PredictConfig())
    out = capsys.readouterr().out
    assert not TERMINAL_CONTROLS.search(out), out
    assert "skipped unreadable image: /g/\\x1b[2J\\x1b]0;owned\\x07x\\u202ejpg.exe: cannot read image (bad \\x9b data)" in out


SEARCH_RESULT = {
    "index": "idx",
    "searches": [
        {"query": "a red\x1b[2J car", "results": [
            {"rank": 1, "id": 3, "name": "\x1b]0;owned\x07b\x9b.jpg", "path": "/g/\x1b[31mb.jpg", "score": 0.5,
             "category": "vehicle", "label": "x\u202ey\udcff\U000e0001"}]},
        {"query": "a man", "results": []},
    ],
}


def test_search_prints_names_escaped(capsys):
    from traffic_retrieval.commands.search import SearchConfig, print_result

    print_result(SEARCH_RESULT, SearchConfig(text=["q"]))
    out = capsys.readouterr().out
    assert not TERMINAL_CONTROLS.search(out), out
    assert "query: a red\\x1b[2J car" in out and "\\x1b]0;owned\\x07b\\x9b.jpg  /g/\\x1b[31mb.jpg" in out


def test_search_json_lines_escape_every_control_and_still_parse(capsys):
    from traffic_retrieval.commands.search import SearchConfig, print_result

    print_result(SEARCH_RESULT, SearchConfig(text=["q"], json=True))
    out = capsys.readouterr().out
    assert not TERMINAL_CONTROLS.search(out), out
    assert [json.loads(line) for line in out.splitlines()] == SEARCH_RESULT["searches"]


# --- finding 14 (vocabulary part): a malformed vocabulary JSON -------------------------


@pytest.mark.parametrize("content, fragments", [
    ({"colors": ["white", 5], "types": ["SUV"], "brands": ["Audi"]}, ["'colors'", "item 2", "string", "int"]),
    ({"colors": "white", "types": ["SUV"], "brands": ["Audi"]}, ["'colors'", "must be a list of strings", "str"]),
    ({"colors": ["white"], "types": {"SUV": 1}, "brands": ["Audi"]}, ["'types'", "must be a list of strings", "dict"]),
    ({"colors": ["white"], "types": ["SUV"]}, ["missing key 'brands'"]),
    ({"Colors": ["white"], "Types": ["SUV"], "Brands": [None]}, ["'Brands'", "item 1", "NoneType"]),
    ({"colors": ["white"], "types": [""], "brands": ["Audi"]}, ["'types'", "item 1", "empty"]),
    (["white", "SUV"], ["not a vocabulary JSON object", "list"]),
    ("[" * 100_000, ["not valid JSON"]),
    ("{\"colors\": [", ["not valid JSON"]),
    (b"\xff\xfe{}", ["not UTF-8"]),
])
def test_malformed_vocabulary_json_is_a_one_line_error_naming_file_and_key(tmp_path, content, fragments):
    path = tmp_path / "vehicle_vocabulary.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(TrafficRetrievalError) as error:
        VehicleVocabulary.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < len(str(path)) + 200, message
    for fragment in fragments:
        assert fragment in message, message


def test_wellformed_vocabularies_still_load(tmp_path):
    path = tmp_path / "vehicle_vocabulary.json"
    path.write_text(json.dumps({"Colors": ["white"], "Types": ["SUV"], "Brands": ["Audi"], "note": "extra keys are ignored"}))
    assert VehicleVocabulary.load(path) == VehicleVocabulary(["white"], ["SUV"], ["Audi"])
    path.write_text(json.dumps(VehicleVocabulary.published().to_json_dict()))
    assert VehicleVocabulary.load(path) == VehicleVocabulary.published()


# --- finding 15: dependency floors ---------------------------------------------------

# name -> the last release with a known vulnerability in what this tool uses
LAST_VULNERABLE = {
    "pillow": "12.3.0",  # CVE-2023-4863 (libwebp, fixed in 10.0.1, and .webp is a gallery suffix) ... the decoder advisories against 12.3.0, fixed in 13.0.0
    "h11": "0.15.0",  # CVE-2025-43859 (request smuggling through chunked bodies), fixed in 0.16.0
    "starlette": "0.49.0",  # CVE-2025-62727 (Range header DoS on FileResponse, which serves gallery images), fixed in 0.49.1
}


def test_dependency_floors_exclude_known_vulnerable_releases():
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}
    for name, last_vulnerable in LAST_VULNERABLE.items():
        assert name in requirements, f"{name} must be a direct dependency with a floor"
        specifier = requirements[name].specifier
        assert not specifier.contains(last_vulnerable, prereleases=True), f"{name}{specifier} allows {last_vulnerable}"
        assert specifier.contains(version(name), prereleases=True), f"the installed {name} {version(name)} does not satisfy {specifier}"
    # Pillow 13 needs Python 3.11: a project that still admitted 3.10 could not be installed there
    assert not SpecifierSet(project["requires-python"]).contains("3.10")
