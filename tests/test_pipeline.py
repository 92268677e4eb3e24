"""End to end on a tiny synthetic dataset with a tiny model: the real CLI, seconds not minutes."""

import json

import pytest

from traffic_retrieval.cli import main
from traffic_retrieval.synth import SynthConfig, generate_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(SynthConfig(out=out, seed=3, train_pedestrians=60, train_vehicles=40, val_pedestrians=20, val_vehicles=12,
                                 test_pedestrians=24, test_vehicles=16, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    work, run = root / "work", root / "run"
    assert main(["prepare", "--data", str(tiny_dataset), "--work", str(work)]) == 0
    assert main(["train", "--work", str(work), "--out", str(run), "--epochs", "2", "--batch-size", "32", "--warmup", "2", "--no-progress"]) == 0
    return work, run


def test_prepare_writes_manifests_vocabulary_and_report(trained_run):
    work, _ = trained_run
    report = json.loads((work / "prepare_report.json").read_text())
    assert report["splits"]["train"]["per_category"] == {"pedestrian": 60, "vehicle": 40}
    assert report["skipped_lines"] == [] and report["missing_images"] == []
    vocabulary = json.loads((work / "vehicle_vocabulary.json").read_text())
    assert set(vocabulary) == {"colors", "types", "brands"} and vocabulary["colors"] == sorted(vocabulary["colors"])
    rows = [json.loads(line) for line in (work / "manifests" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and {r["category"] for r in rows} == {"pedestrian", "vehicle"}


def test_train_writes_config_log_tensorboard_and_checkpoints(trained_run):
    _, run = trained_run
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file() and (run / "training_curves.png").is_file()
    assert any((run / "tensorboard").iterdir())
    for name in ("epoch_1.pt", "epoch_2.pt", "final.pt", "last.pt"):
        assert (run / "checkpoints" / name).is_file(), name
    log = (run / "train.log").read_text()
    assert '"epoch": 2' in log and "official_mAP@10" in log


def test_predict_and_evaluate(trained_run, tiny_dataset, tmp_path, capsys):
    _, run = trained_run
    submission = tmp_path / "submission.json"
    sheet = tmp_path / "sheet.png"
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", str(run / "checkpoints" / "final.pt"),
                 "--out", str(submission), "--contact-sheet", str(sheet), "--no-progress",
                 "--gallery-scope", "all"]) == 0  # routed, a 40-image gallery may hold fewer than 10 images of a category
    assert sheet.stat().st_size > 1000
    results = json.loads(submission.read_text())["results"]
    queries = (tiny_dataset / "test" / "test_text.txt").read_text(encoding="utf-8").splitlines()
    assert [r["text"] for r in results] == queries
    assert all(len(r["image_names"]) == 10 and len(set(r["image_names"])) == 10 for r in results)
    capsys.readouterr()
    assert main(["evaluate", "--submission", str(submission), "--ground-truth", str(tiny_dataset / "ground_truth" / "test_gt.txt"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"official_mAP@10", "strict_mAP@10", "recall@1", "recall@5", "recall@10", "per_category"}
    assert 0 <= scores["strict_mAP@10"] <= scores["official_mAP@10"] <= 1


def test_resume_continues_from_the_last_epoch(trained_run, tmp_path):
    work, run = trained_run
    assert main(["train", "--work", str(work), "--out", str(run), "--epochs", "3", "--batch-size", "32", "--warmup", "2", "--resume", "--no-progress"]) == 0
    assert "resumed from" in (run / "train.log").read_text()
    assert (run / "checkpoints" / "epoch_3.pt").is_file()
    import torch

    final = torch.load(run / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert [record["epoch"] for record in final["history"]] == [1, 2, 3]  # the epochs before the resume too
    assert "scaler" in torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def test_resume_with_other_training_settings_is_refused(trained_run, capsys):
    work, run = trained_run
    recorded = (run / "config.yaml").read_text()
    assert main(["train", "--work", str(work), "--out", str(run), "--epochs", "9", "--batch-size", "32", "--warmup", "2", "--resume",
                 "--resize-mode", "pad", "--lr", "0.5", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "was trained with resize_mode 'squash', this run asks for 'pad' (and 1 more)" in error and error.count("\n") == 1
    assert (run / "config.yaml").read_text() == recorded  # nothing of the run was touched


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["prepare", "--data", str(tmp_path / "missing"), "--work", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "missing" in error
    assert main(["predict", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")]) == 2


def test_predict_with_prompt_and_rerank(trained_run, tiny_dataset, tmp_path):
    _, run = trained_run
    submission = tmp_path / "reranked.json"
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", str(run / "checkpoints" / "final.pt"), "--out", str(submission),
                 "--prompt", "--rerank", "--rerank-candidates", "20", "--rerank-neighbours", "5", "--no-progress", "--gallery-scope", "all"]) == 0
    results = json.loads(submission.read_text())["results"]
    assert all(len(r["image_names"]) == 10 and len(set(r["image_names"])) == 10 for r in results)
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", str(run / "checkpoints" / "final.pt"), "--out", str(submission),
                 "--rerank", "--rerank-neighbours", "0", "--no-progress"]) == 2


def test_augment_and_soup_commands(trained_run, tiny_dataset, tmp_path, capsys):
    work, run = trained_run
    assert main(["augment", "--work", str(work), "--checkpoint", str(run / "checkpoints" / "final.pt"), "--out-manifest", "train_aug", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (work / "manifests" / "train_aug.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and any("augmented_from" in r for r in rows)
    epochs = sorted((run / "checkpoints").glob("epoch_*.pt"))
    assert len(epochs) >= 2
    soup = tmp_path / "soup.pt"
    assert main(["soup", "--checkpoints", *map(str, epochs), "--val", str(tiny_dataset), "--out", str(soup)]) == 0
    assert "greedy soup" in capsys.readouterr().out
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", str(soup), "--out", str(tmp_path / "s.json"), "--no-progress"]) == 0


def test_predict_from_an_index_equals_predict_from_images(trained_run, tiny_dataset, tmp_path):
    _, run = trained_run
    checkpoint = str(run / "checkpoints" / "final.pt")
    index = tmp_path / "gallery.index"
    assert main(["index", "--images", str(tiny_dataset / "test" / "test_images"), "--checkpoint", checkpoint, "--out", str(index), "--no-progress"]) == 0
    direct, indexed = tmp_path / "direct.json", tmp_path / "indexed.json"
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", checkpoint, "--out", str(direct), "--no-progress"]) == 0
    assert main(["predict", "--data", str(tiny_dataset), "--checkpoint", checkpoint, "--index", str(index), "--out", str(indexed), "--no-progress"]) == 0
    direct_results = json.loads(direct.read_text())["results"]
    indexed_results = json.loads(indexed.read_text())["results"]
    assert [r["text"] for r in direct_results] == [r["text"] for r in indexed_results]
    # float16 storage in the index may swap near-ties; the top result sets agree
    overlap = sum(len(set(a["image_names"]) & set(b["image_names"])) for a, b in zip(direct_results, indexed_results))
    assert overlap >= 0.9 * 10 * len(direct_results)
