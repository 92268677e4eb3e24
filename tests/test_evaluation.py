"""Tests of the scorer: hand-computed metrics, the organisers' 1e-6 detail, file
validation, and a property test against a plain-Python reimplementation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.evaluation.evaluate import evaluate_files, format_report
from traffic_retrieval.evaluation.metrics import (
    QUERIES_WITHOUT_RELEVANT,
    SHORT_RESULTS,
    evaluate_rankings,
    hit_matrix,
    official_average_precision,
    recall_at,
    strict_average_precision,
)
from traffic_retrieval.evaluation.submission import (
    SubmissionResult,
    load_ground_truth,
    load_submission,
    write_submission,
)

EPS = 1e-6
PEDESTRIAN_TEXT = "A walking woman who is an adult person aged 18-60, carrying a handbag."
VEHICLE_TEXT = "This is a white Audi."
NAMES = [f"img{i:02d}.jpg" for i in range(20)]


# --- an independent, straightforward reimplementation (reference only) ---------------


def reference_official_ap(predicted: list[str], relevant: set[str], top_k: int = 10) -> float:
    """The organisers' loop, transcribed."""
    hits = 1e-6
    total = 0.0
    for j, name in enumerate(predicted[:top_k], start=1):
        if name in relevant:
            hits += 1
            total += hits / j
    return total / hits


def reference_strict_ap(predicted: list[str], relevant: set[str], top_k: int = 10) -> float:
    found = 0
    total = 0.0
    for j, name in enumerate(predicted[:top_k], start=1):
        if name in relevant:
            found += 1
            total += found / j
    denominator = min(len(relevant), top_k)
    return total / denominator if denominator else 0.0


def reference_recall(predicted: list[str], relevant: set[str], cutoff: int) -> float:
    return 1.0 if any(name in relevant for name in predicted[:cutoff]) else 0.0


def ranked(hit_ranks: list[int], length: int = 10) -> tuple[list[str], set[str]]:
    """A predicted list of ``length`` names whose 1-based ``hit_ranks`` are relevant."""
    predicted = [f"p{j}" for j in range(1, length + 1)]
    return predicted, {f"p{j}" for j in hit_ranks}


def one_query(hit_ranks: list[int], num_relevant: int | None = None, length: int = 10):
    predicted, relevant = ranked(hit_ranks, length)
    if num_relevant is not None:
        relevant |= {f"other{i}" for i in range(num_relevant - len(relevant))}
    return evaluate_rankings([predicted], [relevant], ["pedestrian"])


# --- hand-computed metrics ----------------------------------------------------------


def test_official_ap_relevant_at_ranks_1_and_3():
    report = one_query([1, 3])
    # counter 1e-6: rank 1 -> hits 1+e, adds (1+e)/1; rank 3 -> hits 2+e, adds (2+e)/3;
    # AP = ((1+e) + (2+e)/3) / (2+e), i.e. (1/1 + 2/3)/2 = 5/6 up to the 1e-6 counter.
    expected = ((1 + EPS) / 1 + (2 + EPS) / 3) / (2 + EPS)
    assert report.overall.official_map == pytest.approx(expected, abs=1e-15)
    assert report.overall.official_map == pytest.approx(5 / 6, abs=1e-6)


def test_official_ap_simple_cases():
    # A single hit at rank 2: ((1+e)/2) / (1+e) = 1/2 exactly.
    assert one_query([2]).overall.official_map == pytest.approx(0.5, abs=1e-15)
    # No hit: 0 / e = 0.
    assert one_query([]).overall.official_map == 0.0
    # Every rank a hit: sum_j (j+e)/j / (10+e) = (10 + e*H10)/(10+e) ~ 1.
    assert one_query(list(range(1, 11))).overall.official_map == pytest.approx(1.0, abs=1e-6)
    # The official AP ignores relevant images never retrieved: one hit at rank 1 of 50 relevant -> 1.
    assert one_query([1], num_relevant=50).overall.official_map == pytest.approx(1.0, abs=1e-15)


def test_official_counter_starts_at_one_millionth():
    hits = np.zeros((1, 10), dtype=bool)
    hits[0, [0, 2]] = True
    official = official_average_precision(hits)[0]
    # A counter starting at 0 gives (1/1 + 2/3)/2 = 5/6.
    zero_start = (1 / 1 + 2 / 3) / 2
    # With e = 1e-6: ((1+e) + (2+e)/3)/(2+e) = (5/3 + 4e/3)/(2+e) ~ 5/6 + e/4.
    difference = official - zero_start
    assert 0 < difference < 1e-6
    assert difference == pytest.approx(EPS / 4, rel=1e-3)


def test_strict_ap():
    # Hits at ranks 1 and 3 of 4 relevant images: (1/1 + 2/3) / min(4, 10) = 5/12.
    assert one_query([1, 3], num_relevant=4).overall.strict_map == pytest.approx(5 / 12, abs=1e-12)
    # 15 relevant images, capped at 10: (1/1 + 2/3) / 10 = 1/6.
    assert one_query([1, 3], num_relevant=15).overall.strict_map == pytest.approx(1 / 6, abs=1e-12)
    # Both relevant images found at ranks 2 and 4: (1/2 + 2/4) / 2 = 1/2.
    assert one_query([2, 4], num_relevant=2).overall.strict_map == pytest.approx(0.5, abs=1e-12)
    # No relevant image at all: defined as 0.
    assert strict_average_precision(np.zeros((1, 10), dtype=bool), [0])[0] == 0.0


def test_recall_is_hit_rate():
    # First hit at rank 3: not in the top 1, in the top 5 and 10.
    recall = one_query([3, 4], num_relevant=20).overall.recall
    assert (recall[1], recall[5], recall[10]) == (0.0, 1.0, 1.0)
    # First hit at rank 7: only in the top 10.
    recall = one_query([7]).overall.recall
    assert (recall[1], recall[5], recall[10]) == (0.0, 0.0, 1.0)
    # Hit at rank 1.
    recall = one_query([1]).overall.recall
    assert (recall[1], recall[5], recall[10]) == (1.0, 1.0, 1.0)


def test_means_over_queries_and_truncation():
    hit_13, relevant_13 = ranked([1, 3])
    miss, relevant_none = ranked([])
    # 12 predicted names with the only hit at rank 11: truncated to 10, so no hit.
    long_list, relevant_11 = ranked([11], length=12)
    report = evaluate_rankings(
        [hit_13, miss, long_list], [relevant_13, relevant_none | {"x"}, relevant_11], ["pedestrian"] * 3
    )
    # official: (5/6 + 0 + 0) / 3 = 5/18 (up to the 1e-6 counter)
    assert report.overall.official_map == pytest.approx(5 / 18, abs=1e-6)
    # strict: ((1 + 2/3)/2 + 0 + 0) / 3 = 5/18 exactly (2 relevant images in query 1)
    assert report.overall.strict_map == pytest.approx(5 / 18, abs=1e-12)
    assert report.overall.recall[1] == pytest.approx(1 / 3)
    assert report.overall.num_queries == 3


def test_short_lists_are_padded_and_counted():
    hits = hit_matrix([["a", "b"], []], [{"b"}, {"c"}], top_k=10)
    assert hits.shape == (2, 10)
    assert hits[0].tolist() == [False, True] + [False] * 8
    report = evaluate_rankings([["a", "b"], []], [{"b"}, set()], ["pedestrian", "vehicle"])
    assert report.warnings == {SHORT_RESULTS: 2, QUERIES_WITHOUT_RELEVANT: 1}
    assert recall_at(hits, 1).tolist() == [0.0, 0.0]


def test_per_category_split():
    hit_1, relevant_1 = ranked([1])
    hit_2, relevant_2 = ranked([2])
    miss, relevant_miss = ranked([])
    report = evaluate_rankings(
        [hit_1, hit_2, miss],
        [relevant_1, relevant_2, relevant_miss | {"x"}],
        ["pedestrian", "vehicle", "vehicle"],
    )
    pedestrian = report.per_category["pedestrian"]
    vehicle = report.per_category["vehicle"]
    assert pedestrian.num_queries == 1 and vehicle.num_queries == 2
    assert pedestrian.official_map == pytest.approx(1.0)
    # vehicle: (1/2 + 0) / 2 = 1/4
    assert vehicle.official_map == pytest.approx(0.25)
    # overall: (1 + 1/2 + 0) / 3 = 1/2
    assert report.overall.official_map == pytest.approx(0.5)


def test_empty_category_is_reported_with_zero_queries():
    predicted, relevant = ranked([1])
    data = evaluate_rankings([predicted], [relevant], ["vehicle"]).to_json_dict()
    assert data["per_category"]["pedestrian"]["num_queries"] == 0
    assert data["per_category"]["pedestrian"]["official_mAP@10"] == 0.0


def test_to_json_dict_keys():
    predicted, relevant = ranked([1])
    data = evaluate_rankings([predicted], [relevant], ["pedestrian"]).to_json_dict()
    metric_keys = ["official_mAP@10", "strict_mAP@10", "recall@1", "recall@5", "recall@10", "num_queries"]
    assert list(data) == metric_keys + ["per_category", "warnings"]
    assert list(data["per_category"]) == ["pedestrian", "vehicle"]
    for category in data["per_category"].values():
        assert list(category) == metric_keys
    assert set(data["warnings"]) == {SHORT_RESULTS, QUERIES_WITHOUT_RELEVANT}
    assert json.loads(json.dumps(data)) == data
    assert isinstance(data["official_mAP@10"], float) and isinstance(data["num_queries"], int)


# --- property test against the reference --------------------------------------------


@st.composite
def rankings(draw):
    num_queries = draw(st.integers(min_value=1, max_value=12))
    predicted, relevant = [], []
    for _ in range(num_queries):
        predicted.append(draw(st.lists(st.sampled_from(NAMES), max_size=10, unique=True)))
        relevant.append(draw(st.sets(st.sampled_from(NAMES), max_size=15)))
    categories = draw(st.lists(st.sampled_from(["pedestrian", "vehicle"]), min_size=num_queries, max_size=num_queries))
    return predicted, relevant, categories


@settings(max_examples=300, deadline=None)
@given(rankings())
def test_vectorised_metrics_equal_reference(case):
    predicted, relevant, categories = case
    report = evaluate_rankings(predicted, relevant, categories)
    n = len(predicted)
    official = [reference_official_ap(p, r) for p, r in zip(predicted, relevant)]
    strict = [reference_strict_ap(p, r) for p, r in zip(predicted, relevant)]
    assert abs(report.overall.official_map - sum(official) / n) < 1e-6
    assert abs(report.overall.strict_map - sum(strict) / n) < 1e-9
    for cutoff in (1, 5, 10):
        expected = sum(reference_recall(p, r, cutoff) for p, r in zip(predicted, relevant)) / n
        assert abs(report.overall.recall[cutoff] - expected) < 1e-12
    for category in ("pedestrian", "vehicle"):
        members = [i for i in range(n) if categories[i] == category]
        summary = report.per_category[category]
        assert summary.num_queries == len(members)
        expected = sum(official[i] for i in members) / len(members) if members else 0.0
        assert abs(summary.official_map - expected) < 1e-6
    # Per query too, where the 1e-6 counter matters most.
    hits = hit_matrix(predicted, relevant)
    assert np.allclose(official_average_precision(hits), official, rtol=0, atol=1e-12)
    num_relevant = [len(r) for r in relevant]
    assert np.allclose(strict_average_precision(hits, num_relevant), strict, rtol=0, atol=1e-12)


# --- files: evaluation end to end ----------------------------------------------------


def write_gt(path: Path, lines: list[tuple[str, list[str]]], newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join("$".join([query, *names]) for query, names in lines) + newline
    path.write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


GT_LINES = [
    (PEDESTRIAN_TEXT, ["a.jpg", "b.jpg"]),
    (VEHICLE_TEXT, ["c.jpg"]),
]


@pytest.fixture
def gt_path(tmp_path) -> Path:
    return write_gt(tmp_path / "test_gt.txt", GT_LINES)


def submission(*entries: tuple[str, list[str]]) -> dict:
    return {"results": [{"text": text, "image_names": names} for text, names in entries]}


def test_evaluate_files_end_to_end(tmp_path, gt_path):
    sub = write_json(
        tmp_path / "sub.json",
        submission((PEDESTRIAN_TEXT, ["c.jpg", "a.jpg"]), (VEHICLE_TEXT, ["c.jpg", "a.jpg", "b.jpg"])),
    )
    data = evaluate_files(sub, gt_path).to_json_dict()
    # pedestrian: hit at rank 2 only -> official 1/2, strict (1/2)/2 = 1/4
    # vehicle: hit at rank 1 -> official 1, strict 1/1 = 1
    assert data["official_mAP@10"] == pytest.approx(0.75, abs=1e-6)
    assert data["strict_mAP@10"] == pytest.approx(0.625)
    assert data["recall@1"] == pytest.approx(0.5)
    assert data["per_category"]["pedestrian"]["official_mAP@10"] == pytest.approx(0.5)
    assert data["per_category"]["vehicle"]["strict_mAP@10"] == pytest.approx(1.0)
    assert data["per_category"]["vehicle"]["num_queries"] == 1
    assert data["warnings"] == {SHORT_RESULTS: 2, QUERIES_WITHOUT_RELEVANT: 0}
    table = format_report(evaluate_files(sub, gt_path))
    assert "official mAP@10" in table and "pedestrian" in table and "vehicle" in table
    assert "75.00" in table and "warning: 2 results with fewer than 10 image names" in table


def test_ground_truth_with_bom_and_crlf(tmp_path):
    gt = write_gt(tmp_path / "gt.txt", GT_LINES, newline="\r\n", bom=True)
    queries = load_ground_truth(gt)
    assert [q.text for q in queries] == [PEDESTRIAN_TEXT, VEHICLE_TEXT]
    assert queries[0].relevant_names == {"a.jpg", "b.jpg"}
    assert queries[1].relevant_names == {"c.jpg"}
    sub = write_json(tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["a.jpg"]), (VEHICLE_TEXT, ["c.jpg"])))
    assert evaluate_files(sub, gt).overall.official_map == pytest.approx(1.0)


def test_repeated_query_texts_are_matched_by_position(tmp_path):
    # The same text twice with different relevant images (one line per test image).
    gt = write_gt(tmp_path / "gt.txt", [(VEHICLE_TEXT, ["x.jpg"]), (VEHICLE_TEXT, ["y.jpg"])])
    right = write_json(tmp_path / "right.json", submission((VEHICLE_TEXT, ["x.jpg"]), (VEHICLE_TEXT, ["y.jpg"])))
    swapped = write_json(tmp_path / "swap.json", submission((VEHICLE_TEXT, ["y.jpg"]), (VEHICLE_TEXT, ["x.jpg"])))
    assert evaluate_files(right, gt).overall.official_map == pytest.approx(1.0)
    assert evaluate_files(swapped, gt).overall.official_map == 0.0


def test_line_without_images_is_a_warning(tmp_path):
    gt = write_gt(tmp_path / "gt.txt", [(PEDESTRIAN_TEXT, []), (VEHICLE_TEXT, ["c.jpg"])])
    sub = write_json(tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["c.jpg"]), (VEHICLE_TEXT, ["c.jpg"])))
    report = evaluate_files(sub, gt)
    assert report.warnings[QUERIES_WITHOUT_RELEVANT] == 1
    assert report.overall.strict_map == pytest.approx(0.5)


def test_gallery_dir_defines_valid_names(tmp_path, gt_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "distractor.jpg"):
        (gallery / name).write_bytes(b"")
    sub = write_json(
        tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["distractor.jpg", "a.jpg"]), (VEHICLE_TEXT, ["c.jpg"]))
    )
    assert evaluate_files(sub, gt_path, gallery_dir=gallery).overall.num_queries == 2
    with pytest.raises(TrafficRetrievalError, match=r"results\[0\].*'distractor.jpg'.*not in the gallery"):
        evaluate_files(sub, gt_path)  # without the folder, the gallery is the ground truth's names
    with pytest.raises(TrafficRetrievalError, match="gallery directory not found"):
        evaluate_files(sub, gt_path, gallery_dir=tmp_path / "missing")


# --- validation errors ---------------------------------------------------------------


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_invalid_json_reports_line_and_column(tmp_path, gt_path):
    sub = tmp_path / "sub.json"
    sub.write_text('{"results": [\n{"text": "a", "image_names": []},\n{"text": }\n]}', encoding="utf-8")
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path)
    assert_one_line_error(excinfo, f"{sub}:3:10:", "not valid JSON")


@pytest.mark.parametrize(
    "data, fragment",
    [
        ([], '"results" list'),
        ({"result": []}, '"results" list'),
        ({"results": {}}, '"results" list'),
        ({"results": ["text"]}, "results[0]: expected an object"),
        ({"results": [{"image_names": []}]}, 'results[0]: missing "text"'),
        ({"results": [{"text": "t", "image_names": []}, {"text": "t"}]}, 'results[1]: missing "image_names"'),
        ({"results": [{"text": 3, "image_names": []}]}, '"text" must be a string'),
        ({"results": [{"text": "t", "image_names": "a.jpg"}]}, '"image_names" must be a list'),
        ({"results": [{"text": "t", "image_names": ["a.jpg", 7]}]}, '"image_names"[1] must be a string'),
        ({"results": [{"text": "t", "image_names": ["a.jpg", "b.jpg", "a.jpg"]}]}, "duplicate image name 'a.jpg'"),
    ],
)
def test_structural_errors(tmp_path, gt_path, data, fragment):
    sub = write_json(tmp_path / "sub.json", data)
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path)
    assert_one_line_error(excinfo, str(sub), fragment)


def test_result_count_must_match_ground_truth(tmp_path, gt_path):
    sub = write_json(tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["a.jpg"])))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path)
    assert_one_line_error(excinfo, str(sub), "1 results", str(gt_path), "2 query lines")


def test_text_must_match_ground_truth_line(tmp_path, gt_path):
    wrong = "A running man " + "x" * 200
    sub = write_json(tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["a.jpg"]), (wrong, ["c.jpg"])))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path)
    assert_one_line_error(excinfo, f"{sub}: results[1]", "'A running man", f"{gt_path}:2", repr(VEHICLE_TEXT))
    assert len(str(excinfo.value)) < 300  # the long text is truncated


def test_unknown_name_and_too_many_names(tmp_path, gt_path):
    sub = write_json(tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["a.jpg"]), (VEHICLE_TEXT, ["zzz.jpg"])))
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path)
    assert_one_line_error(excinfo, f"{sub}: results[1]", "'zzz.jpg' at rank 1 is not in the gallery")

    sub = write_json(
        tmp_path / "sub.json", submission((PEDESTRIAN_TEXT, ["a.jpg", "b.jpg", "c.jpg"]), (VEHICLE_TEXT, []))
    )
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt_path, top_k=2)
    assert_one_line_error(excinfo, f"{sub}: results[0]", "3 image names, at most 2 allowed")
    with pytest.raises(TrafficRetrievalError, match="top_k must be at least 1"):
        evaluate_files(sub, gt_path, top_k=0)


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff\r\n"])
def test_empty_ground_truth_is_an_error(tmp_path, content):
    gt = tmp_path / "gt.txt"
    gt.write_text(content, encoding="utf-8")
    sub = write_json(tmp_path / "sub.json", submission())
    with pytest.raises(TrafficRetrievalError) as excinfo:
        evaluate_files(sub, gt)
    assert_one_line_error(excinfo, str(gt), "empty")


def test_ground_truth_inner_blank_line_is_an_error(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text(f"{VEHICLE_TEXT}$c.jpg\n\n{VEHICLE_TEXT}$d.jpg\n", encoding="utf-8")
    with pytest.raises(TrafficRetrievalError) as excinfo:
        load_ground_truth(gt)
    assert_one_line_error(excinfo, f"{gt}:2", "empty line")


def test_missing_and_undecodable_files(tmp_path, gt_path):
    with pytest.raises(TrafficRetrievalError, match="submission file not found"):
        evaluate_files(tmp_path / "nope.json", gt_path)
    sub = write_json(tmp_path / "sub.json", submission())
    with pytest.raises(TrafficRetrievalError, match="ground-truth file not found"):
        evaluate_files(sub, tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9$a.jpg\n")
    with pytest.raises(TrafficRetrievalError, match="not UTF-8"):
        load_ground_truth(bad)


# --- writing submissions ---------------------------------------------------------------


def test_write_submission_round_trip_one_result_per_line(tmp_path):
    results = [
        SubmissionResult(PEDESTRIAN_TEXT, ("a.jpg", "b.jpg")),
        {"text": "Un café \"quoted\"", "image_names": ["c.jpg"]},
        SubmissionResult(VEHICLE_TEXT, ()),
    ]
    path = write_submission(tmp_path / "out" / "submission.json", results)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 + len(results)
    assert json.loads(lines[1].rstrip(",")) == {"text": PEDESTRIAN_TEXT, "image_names": ["a.jpg", "b.jpg"]}
    loaded = load_submission(path)
    assert [r.text for r in loaded] == [PEDESTRIAN_TEXT, 'Un café "quoted"', VEHICLE_TEXT]
    assert loaded[0].image_names == ("a.jpg", "b.jpg") and loaded[2].image_names == ()
    # Replacing an existing file leaves no temporary file behind.
    write_submission(path, results[:1])
    assert len(load_submission(path)) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["submission.json"]
    assert write_submission(tmp_path / "empty.json", []) and load_submission(tmp_path / "empty.json") == []


def test_write_submission_keeps_old_file_when_writing_fails(tmp_path):
    path = write_submission(tmp_path / "submission.json", [SubmissionResult(VEHICLE_TEXT, ("c.jpg",))])
    before = path.read_bytes()

    def broken():
        yield {"text": VEHICLE_TEXT, "image_names": ["c.jpg"]}
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        write_submission(path, broken())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]


# --- full size (speed is a benchmark's business, not a unit test's) -----------------


def test_full_size_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    gallery = [f"{i:06d}.jpg" for i in range(17_611)]
    texts = [PEDESTRIAN_TEXT if i % 4 else f"This is a red BMW number {i % 50}." for i in range(17_611)]
    gt_lines, results = [], []
    relevant_ids = rng.integers(0, len(gallery), size=(len(texts), 14))
    distractor_ids = rng.integers(0, len(gallery), size=(len(texts), 7))
    for text, relevant_row, distractor_row in zip(texts, relevant_ids, distractor_ids):
        relevant = list(dict.fromkeys(gallery[i] for i in relevant_row))
        predicted = list(dict.fromkeys(relevant[:3] + [gallery[i] for i in distractor_row]))
        gt_lines.append((text, relevant))
        results.append(SubmissionResult(text, tuple(predicted)))
    gt = write_gt(tmp_path / "gt.txt", gt_lines)
    sub = write_submission(tmp_path / "sub.json", results)
    report = evaluate_files(sub, gt)
    assert report.overall.num_queries == 17_611
    assert report.per_category["vehicle"].num_queries == 17_611 // 4 + 1
