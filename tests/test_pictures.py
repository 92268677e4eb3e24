"""Pictures: the contact sheet of ranked results (size, outlines from the ground
truth, limits) and the training curves drawn from a real-format train.log."""

import json
from pathlib import Path

import pytest
from PIL import Image

from traffic_retrieval.synth import SynthConfig, generate_dataset
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.evaluation.submission import load_ground_truth
from traffic_retrieval.retrieval.contact_sheet import GREEN, NEUTRAL, OUTLINE, RED, cell_origin, make_contact_sheet, sheet_size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    generate_dataset(SynthConfig(out=root, seed=1, train_pedestrians=2, train_vehicles=2, val_pedestrians=0, val_vehicles=0,
                                 test_pedestrians=8, test_vehicles=6, workers=1), progress=False)
    gallery = root / "test" / "test_images"
    truth = load_ground_truth(root / "ground_truth" / "test_gt.txt")
    names = sorted(p.name for p in gallery.iterdir())
    # a ranking with some hits: the first relevant name at rank 2, the rest filled from the gallery
    ranked = []
    for query in truth:
        relevant = sorted(query.relevant_names)
        others = [n for n in names if n not in query.relevant_names]
        ranked.append([others[0], *relevant[:1], *others[1:4]])
    return {"gallery": gallery, "queries": [q.text for q in truth], "relevant": [q.relevant_names for q in truth], "ranked": ranked}


def outline_color(sheet: Image.Image, row: int, column: int, thumb: int) -> tuple:
    x, y = cell_origin(row, column, thumb)
    return sheet.getpixel((x + OUTLINE // 2, y + thumb // 2))  # the middle of the left edge


def test_contact_sheet_size_and_outlines(dataset, tmp_path):
    queries, ranked, relevant = dataset["queries"][:3], dataset["ranked"][:3], dataset["relevant"][:3]
    out = make_contact_sheet(queries, ranked, dataset["gallery"], tmp_path / "sheets" / "sheet.png", relevant=relevant, thumb=64)
    assert out == tmp_path / "sheets" / "sheet.png" and out.is_file()
    sheet = Image.open(out)
    assert sheet.format == "PNG" and sheet.mode == "RGB"
    # text column 3 x 64 + 6; five cells of 64 + 2 x 3 with 6 between; rows of 70 + 16 with 6 between; margins 10; header 28
    assert sheet.size == sheet_size(3, 5, 64) == (20 + 192 + 6 + 5 * 70 + 4 * 6, 20 + 28 + 3 * 86 + 2 * 6)
    for row in range(3):
        for column, name in enumerate(ranked[row]):
            expected = GREEN if name in relevant[row] else RED
            assert outline_color(sheet, row, column, 64) == expected, (row, column, name)
    assert [outline_color(sheet, row, 1, 64) for row in range(3)] == [GREEN] * 3  # the planted hits
    x, y = cell_origin(0, 0, 64)
    inside = sheet.crop((x + OUTLINE, y + OUTLINE, x + OUTLINE + 64, y + OUTLINE + 64))
    assert len(inside.getcolors(1 << 24)) > 20  # a picture was pasted, not a flat box


def test_contact_sheet_without_ground_truth_and_with_many_queries(dataset, tmp_path):
    count = len(dataset["queries"])
    queries = (dataset["queries"] * 3)[:25]
    ranked = (dataset["ranked"] * 3)[:25]
    assert count < 25
    out = make_contact_sheet(queries, ranked, dataset["gallery"], tmp_path / "plain.png")  # defaults: thumb 96, 20 queries
    sheet = Image.open(out)
    assert sheet.size == sheet_size(20, 5, 96)
    colors = {color for _, color in sheet.getcolors(1 << 24)}
    assert GREEN not in colors and RED not in colors
    assert outline_color(sheet, 19, 4, 96) == NEUTRAL


def test_contact_sheet_missing_images_and_bad_input(dataset, tmp_path):
    out = make_contact_sheet(["a query"], [["nowhere.jpg", *dataset["ranked"][0][:2]]], dataset["gallery"], tmp_path / "missing.png",
                             relevant=[{"nowhere.jpg"}], thumb=32, max_queries=1)
    sheet = Image.open(out)
    assert sheet.size == sheet_size(1, 3, 32) and outline_color(sheet, 0, 0, 32) == GREEN and outline_color(sheet, 0, 1, 32) == RED
    with pytest.raises(TrafficRetrievalError, match="2 queries but 1 result lists"):
        make_contact_sheet(["a", "b"], [["x.jpg"]], dataset["gallery"], tmp_path / "bad.png")
    with pytest.raises(TrafficRetrievalError, match="ground-truth"):
        make_contact_sheet(["a"], [["x.jpg"]], dataset["gallery"], tmp_path / "bad.png", relevant=[])
    with pytest.raises(TrafficRetrievalError, match="thumb"):
        make_contact_sheet(["a"], [["x.jpg"]], dataset["gallery"], tmp_path / "bad.png", thumb=4)
    assert not (tmp_path / "bad.png").exists()


def write_log(run_dir: Path, records: list[dict]) -> None:
    """train.log exactly as the trainer writes it (its RunLog)."""
    from traffic_retrieval.train.log import RunLog

    log = RunLog(run_dir)
    log.line("training TR-Tiny-RN on 16 pairs (0 unreadable images skipped), 3 epochs x 2 steps of 8 on 1 process(es), device cpu, autocast None")
    for record in records:
        log.line(json.dumps(record))
    log.line("done: final.pt")
    log.close()


def test_training_curves_from_train_log(tmp_path):
    from traffic_retrieval.train.curves import plot_training_curves, read_epoch_records, write_training_curves

    val = lambda x: {"official_mAP@10": x, "strict_mAP@10": x / 2, "recall@1": x, "recall@5": x + 0.1, "recall@10": x + 0.2,
                     "per_category": {"pedestrian": {"official_mAP@10": x}}}
    records = [{"epoch": e, "step": 2 * e, "loss": 3.0 / e, "samples_per_second": 50.0, "val": val(0.1 * e)} for e in (1, 2, 3)]
    run = tmp_path / "run"
    run.mkdir()
    write_log(run, records[:2] + [{**records[1], "loss": 1.4}] + records[2:])  # a resumed run logs epoch 2 again
    assert [r["epoch"] for r in read_epoch_records(run / "train.log")] == [1, 2, 3]
    assert read_epoch_records(run / "train.log")[1]["loss"] == 1.4  # the later record wins
    out = write_training_curves(run)
    assert out == run / "training_curves.png" and (run / "tensorboard").is_dir()  # next to the TensorBoard logs
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (1100, 400)  # loss and validation panels
    assert len(image.convert("RGB").getcolors(1 << 24)) > 50  # lines and text were drawn

    camera = tmp_path / "camera"  # a run with a camera-domain val split draws its curves beside val's
    camera.mkdir()
    write_log(camera, [{**r, "val_camera": val(0.05 * r["epoch"])} for r in records])
    figure_axes = plot_training_curves(read_epoch_records(camera / "train.log")).axes[1]
    labels = [line.get_label() for line in figure_axes.get_lines()]
    assert "official_mAP@10" in labels and "val_camera official_mAP@10" in labels
    assert write_training_curves(camera) == camera / "training_curves.png"

    no_val = tmp_path / "no_val"
    no_val.mkdir()
    write_log(no_val, [{k: v for k, v in r.items() if k != "val"} for r in records])
    assert Image.open(write_training_curves(no_val)).size == (600, 400)  # the loss panel alone

    empty = tmp_path / "empty"
    empty.mkdir()
    write_log(empty, [])
    assert write_training_curves(empty) is None and not (empty / "training_curves.png").exists()
    with pytest.raises(TrafficRetrievalError, match="training log not found"):
        write_training_curves(tmp_path / "nowhere")
