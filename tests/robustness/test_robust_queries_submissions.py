"""Query files through ``predict`` and submission files through ``evaluate``:
odd queries are answered (and counted), bad files are one-line errors, exit 2."""

import contextlib
import io
import json

import pytest

FITS = "a " * 75  # 75 tokens + start + end = the 77-token context exactly
TOO_LONG = "a " * 76
PEDESTRIAN_LONG = "A walking woman who is an adult person aged 18-60, and is standing sideways and carrying a handbag. " * 4
NON_ASCII = "一辆白色奥迪 🚗 — café crème"
QUERIES = ["", "   ", "\t", "This is a white Audi.", NON_ASCII, FITS, "This is a white Audi.", TOO_LONG, PEDESTRIAN_LONG, "This is a white Audi."]


@pytest.fixture(scope="module")
def predicted(synth_data, random_checkpoint, tmp_path_factory):
    """One predict run over a query file with a BOM, CRLF line ends and every odd query."""
    from traffic_retrieval.cli import main

    root = tmp_path_factory.mktemp("queries")
    queries = root / "queries.txt"
    queries.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(QUERIES).encode("utf-8") + b"\r\n")
    submission = root / "submission.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", "--data", str(synth_data), "--queries", str(queries), "--checkpoint", str(random_checkpoint),
                     "--out", str(submission), "--workers", "0", "--no-progress"])
    assert code == 0
    return json.loads(submission.read_text(encoding="utf-8"))["results"], out.getvalue()


def answered(result) -> bool:
    """Ranked names, best first: 10, or all of the routed category when it holds fewer (random weights route unevenly)."""
    names = result["image_names"]
    return 1 <= len(names) <= 10 and len(set(names)) == len(names)


def test_every_query_line_is_answered_in_order_with_its_exact_text(predicted):
    results, output = predicted
    assert [r["text"] for r in results] == QUERIES  # no BOM, no \r, nothing dropped or merged
    assert all(answered(r) for r in results)
    assert "wrote " in output and f"{len(QUERIES)} queries" in output


def test_empty_and_whitespace_only_queries_are_answered_and_counted(predicted):
    results, output = predicted
    assert all(answered(r) for r in results[:3])
    assert "3 queries are empty or whitespace-only" in output


def test_queries_over_the_77_token_context_are_counted(predicted):
    _, output = predicted
    # TOO_LONG and PEDESTRIAN_LONG are cut; FITS is exactly 77 tokens with start and end and is not
    assert "2 queries exceed the model's 77-token text context and were truncated" in output


def test_non_ascii_query_is_answered_and_kept_verbatim(predicted):
    results, _ = predicted
    assert results[4]["text"] == NON_ASCII and answered(results[4])


def test_duplicate_queries_are_all_answered_alike(predicted):
    results, _ = predicted
    duplicates = [r for r in results if r["text"] == "This is a white Audi."]
    assert len(duplicates) == 3 and all(r["image_names"] == duplicates[0]["image_names"] for r in duplicates)


def predict_argv(synth_data, random_checkpoint, tmp_path, queries):
    return ["predict", "--data", synth_data, "--queries", queries, "--checkpoint", random_checkpoint, "--out", tmp_path / "s.json", "--workers", "0", "--no-progress"]


def test_query_file_not_utf8_names_file_and_line(synth_data, random_checkpoint, tmp_path, cli):
    queries = tmp_path / "q.txt"
    queries.write_bytes("A walking man.\n".encode() + "一辆白色奥迪\n".encode("gbk"))
    cli.error(predict_argv(synth_data, random_checkpoint, tmp_path, queries), f"{queries}:2: not valid UTF-8")
    assert not (tmp_path / "s.json").exists()


def test_query_file_empty_or_a_directory(synth_data, random_checkpoint, tmp_path, cli):
    (tmp_path / "empty.txt").write_bytes(b"")
    cli.error(predict_argv(synth_data, random_checkpoint, tmp_path, tmp_path / "empty.txt"), f"{tmp_path / 'empty.txt'}: no queries")
    (tmp_path / "dir.txt").mkdir()
    cli.error(predict_argv(synth_data, random_checkpoint, tmp_path, tmp_path / "dir.txt"), f"{tmp_path / 'dir.txt'}: query file is a directory")


# --- submissions -----------------------------------------------------------------

GROUND_TRUTH = "This is a white Audi.$a.jpg$b.jpg\nA walking man.$c.jpg\nThis is a white Audi.$a.jpg$b.jpg\n"
TEXTS = ["This is a white Audi.", "A walking man.", "This is a white Audi."]


def submission_json(names_per_result, texts=TEXTS) -> str:
    return json.dumps({"results": [{"text": t, "image_names": n} for t, n in zip(texts, names_per_result)]})


BAD_SUBMISSIONS = {
    "malformed_json": ('{"results": [{"text": "x", "image_names": []},]}', "sub.json:1:47: not valid JSON (Expecting value)"),
    "deeply_nested_json": ("[" * 100_000, "not a usable JSON submission (RecursionError"),
    "number_too_long": ('{"results": ' + "9" * 5000 + "}", "not a usable JSON submission (ValueError"),
    "not_an_object": ("[]", 'expected a JSON object with a "results" list'),
    "not_utf8": (b'{"results": "caf\xe9"}', "not UTF-8"),
    "missing_names_key": ('{"results": [{"text": "x"}]}', 'results[0]: missing "image_names"'),
    "name_not_a_string": (submission_json([["a.jpg"], [3], ["a.jpg"]]), 'results[1]: "image_names"[0] must be a string, got int'),
    "wrong_order": (submission_json([["c.jpg"], ["a.jpg"], ["a.jpg"]], [TEXTS[1], TEXTS[0], TEXTS[2]]),
                    "results[0]: text 'A walking man.' differs from"),
    "too_few_results": (submission_json([["a.jpg"], ["c.jpg"]]), "2 results but"),
    "duplicate_names": (submission_json([["a.jpg"], ["c.jpg", "c.jpg"], ["a.jpg"]]), "results[1]: duplicate image name 'c.jpg' at rank 2"),
    "unknown_name": (submission_json([["a.jpg"], ["c.jpg"], ["zzz.jpg"]]), "results[2]: image name 'zzz.jpg' at rank 1 is not in the gallery"),
    "more_than_k_names": (submission_json([["a.jpg", "b.jpg", "c.jpg"] + [f"x{i}.jpg" for i in range(8)], ["c.jpg"], ["a.jpg"]]),
                          "results[0]: 11 image names, at most 10 allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_bad_submission_is_a_one_line_error(case, tmp_path, cli):
    body, fragment = BAD_SUBMISSIONS[case]
    (tmp_path / "gt.txt").write_text(GROUND_TRUTH)
    (tmp_path / "sub.json").write_bytes(body if isinstance(body, bytes) else body.encode())
    line = cli.error(["evaluate", "--submission", tmp_path / "sub.json", "--ground-truth", tmp_path / "gt.txt"], fragment)
    assert str(tmp_path / "sub.json") in line


def test_fewer_than_k_names_are_scored_and_counted(tmp_path, cli):
    (tmp_path / "gt.txt").write_text(GROUND_TRUTH)
    (tmp_path / "sub.json").write_text(submission_json([["a.jpg", "c.jpg"], ["c.jpg"], []]))
    table = cli.ok("evaluate", "--submission", tmp_path / "sub.json", "--ground-truth", tmp_path / "gt.txt").out
    assert "warning: 3 results with fewer than 10 image names" in table
    scores = json.loads(cli.ok("evaluate", "--submission", tmp_path / "sub.json", "--ground-truth", tmp_path / "gt.txt", "--json").out)
    assert scores["warnings"]["results_shorter_than_top_k"] == 3
    assert scores["official_mAP@10"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-5)


def test_missing_submission_and_ground_truth_files(tmp_path, cli):
    (tmp_path / "gt.txt").write_text(GROUND_TRUTH)
    cli.error(["evaluate", "--submission", tmp_path / "none.json", "--ground-truth", tmp_path / "gt.txt"], f"{tmp_path / 'none.json'}: submission file not found")
    (tmp_path / "sub.json").write_text(submission_json([["a.jpg"], ["c.jpg"], ["a.jpg"]]))
    cli.error(["evaluate", "--submission", tmp_path / "sub.json", "--ground-truth", tmp_path / "none.txt"], f"{tmp_path / 'none.txt'}: ground-truth file not found")
