"""The camera-domain val split (``val_camera``, issue #14) end to end on tiny data: synth
writes it in the test split's surveillance look and leaves the other splits byte-identical,
prepare reads and checks it, train scores every epoch on both val splits and picks best.pt
by the camera one, ablate and soup decide by it. Validation is faked where only the choice
is under test, so each test takes seconds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.synth.generate import CAMERA_VAL_SPLIT, SynthConfig, generate_dataset, plan_dataset

SMALL = dict(train_pedestrians=16, train_vehicles=12, val_pedestrians=6, val_vehicles=6, test_pedestrians=10, test_vehicles=8)
NO_CAMERA = dict(val_camera_pedestrians=0, val_camera_vehicles=0)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _label_names(path: Path) -> list[str]:
    return [line.split("$")[0] for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny dataset with a camera val split of its own counts, the same seed without one)."""
    root = tmp_path_factory.mktemp("camera_val")
    with_camera, without = root / "with", root / "without"
    generate_dataset(SynthConfig(out=with_camera, seed=3, workers=1, val_camera_pedestrians=8, val_camera_vehicles=5, **SMALL), progress=False)
    generate_dataset(SynthConfig(out=without, seed=3, workers=1, **NO_CAMERA, **SMALL), progress=False)
    return with_camera, without


# ------------------------------------------------------------------------------ synth

def test_synth_writes_the_camera_split_in_the_val_format(datasets):
    data, _ = datasets
    labels = data / "val_camera" / "val_camera_label.txt"
    lines = [line.split("$") for line in labels.read_text(encoding="utf-8").splitlines()]
    assert all(len(fields) == 3 for fields in lines)
    pedestrians = [name for name, attr, _ in lines if len(attr.split(",")) == 21]
    assert (len(pedestrians), len(lines) - len(pedestrians)) == (8, 5)
    assert all(len(name) == 6 and name.isdigit() for name in pedestrians)  # no extension, like val's
    files = {p.name for p in (data / "val_camera" / "val_camera_images").iterdir()}
    assert files == {name if name.endswith(".jpg") else name + ".jpg" for name, _, _ in lines}
    other_names = set()
    for split in ("train", "val"):
        other_names |= {p.name for p in (data / split / f"{split}_images").iterdir()}
    other_names |= {p.name for p in (data / "test" / "test_images").iterdir()}
    assert not files & other_names, "camera val names must be its own"
    recorded = json.loads((data / "synth_config.json").read_text())
    assert (recorded["val_camera_pedestrians"], recorded["val_camera_vehicles"]) == (8, 5)


def test_unset_camera_counts_are_val_counts(tmp_path):
    plan = plan_dataset(SynthConfig(out=tmp_path, seed=1, **SMALL))
    camera = plan.specs[CAMERA_VAL_SPLIT]
    assert sum(s.category == "pedestrian" for s in camera) == 6 and sum(s.category == "vehicle" for s in camera) == 6
    with pytest.raises(TrafficRetrievalError, match="val_camera"):
        generate_dataset(SynthConfig(out=tmp_path / "bad", val_camera_vehicles=-1, **SMALL), progress=False)


def _jpeg_tables(path: Path) -> dict:
    with Image.open(path) as image:
        return {k: list(v) for k, v in image.quantization.items()}


def _short_side(path: Path) -> int:
    """The surveillance look downscales (by 0.6-0.85, keeping a legible short side)."""
    with Image.open(path) as image:
        return min(image.size)


def test_camera_split_has_the_test_look_not_the_val_look(datasets):
    data, _ = datasets
    folders = {split: sorted((data / split / f"{split}_images").iterdir()) for split in ("val", "test", "val_camera")}
    tables = {split: {json.dumps(_jpeg_tables(p), sort_keys=True) for p in paths} for split, paths in folders.items()}
    assert len(tables["val_camera"]) == 1 and tables["val_camera"] == tables["test"] != tables["val"]  # the test's JPEG quality
    short_sides = {split: np.median([_short_side(p) for p in paths]) for split, paths in folders.items()}
    assert short_sides["val_camera"] < 0.9 * short_sides["val"] and short_sides["test"] < 0.9 * short_sides["val"]  # downscaled like the test
    val_bytes = {p.read_bytes() for p in folders["val"]}
    assert not any(p.read_bytes() in val_bytes for p in folders["val_camera"])


def test_other_splits_are_byte_identical_with_or_without_the_camera_split(datasets):
    with_camera, without = datasets
    assert not (without / "val_camera").exists()
    kept = {k: v for k, v in _hashes(with_camera).items() if not k.startswith("val_camera/") and k != "synth_config.json"}
    assert kept == {k: v for k, v in _hashes(without).items() if k != "synth_config.json"}
    assert any(k.startswith("val_camera/") for k in _hashes(with_camera))
    # the plan too: names, labels and captions of train, val and test do not depend on the camera counts
    plans = [plan_dataset(SynthConfig(out=Path("unused"), seed=0, val_camera_pedestrians=n, val_camera_vehicles=n)) for n in (0, 300)]
    for split in ("train", "val", "test"):
        assert plans[0].specs[split] == plans[1].specs[split], split
    assert [s.name for s in plans[0].test_queries] == [s.name for s in plans[1].test_queries]


# ---------------------------------------------------------------------------- prepare

def _prepare(data: Path, work: Path) -> dict:
    from traffic_retrieval.commands.prepare import PrepareConfig, run

    return run(PrepareConfig(data=data, work=work))


def test_prepare_writes_the_camera_manifest_and_counts_skipped_lines(datasets, tmp_path):
    from traffic_retrieval.commands.prepare import format_report

    source, without = datasets
    data = tmp_path / "data"
    shutil.copytree(source, data)
    labels = data / "val_camera" / "val_camera_label.txt"
    good = labels.read_text(encoding="utf-8")
    test_image = sorted((data / "test" / "test_images").iterdir())[0]
    shutil.copy(test_image, data / "val_camera" / "val_camera_images" / "leaked.jpg")
    vehicle_line = next(line for line in good.splitlines() if len(line.split("$")[1].split(",")) != 21)
    labels.write_text(good + "no dollar signs here\n" + "absent.jpg$" + vehicle_line.split("$", 1)[1] + "\n"
                      + "leaked.jpg$" + vehicle_line.split("$", 1)[1] + "\n", encoding="utf-8")
    work = tmp_path / "work"
    report = _prepare(data, work)
    stats = report["splits"]["val_camera"]
    assert (stats["label_lines"], stats["parsed"], stats["skipped_lines"], stats["missing_images"], stats["manifest_rows"]) == (16, 15, 1, 1, 14)
    assert stats["per_category"] == {"pedestrian": 8, "vehicle": 6}
    assert any(s["source"].endswith("val_camera_label.txt:14") for s in report["skipped_lines"])
    assert stats["in_test_gallery"] == ["leaked.jpg"] and "warning: 1 val_camera images are also in test/test_images" in format_report(report)
    rows = [json.loads(line) for line in (work / "manifests" / "val_camera.jsonl").read_text().splitlines()]
    val_rows = [json.loads(line) for line in (work / "manifests" / "val.jsonl").read_text().splitlines()]
    assert len(rows) == 14 and set(rows[0]) == set(val_rows[0]) and all("/val_camera/val_camera_images/" in r["image"] for r in rows)

    # the camera split adds nothing to the vocabulary; without it, no camera manifest (an earlier one is removed)
    reference = tmp_path / "reference"
    _prepare(without, reference)
    assert (work / "vehicle_vocabulary.json").read_bytes() == (reference / "vehicle_vocabulary.json").read_bytes()
    shutil.rmtree(data / "val_camera")
    assert _prepare(data, work)["splits"]["val_camera"] is None and not (work / "manifests" / "val_camera.jsonl").exists()


# ------------------------------------------------------------------------------ train

def _fake_validate(scores_by_split: dict[str, list[float]], calls: list[str]):
    """A ``validate`` that returns the next scripted official mAP@10 of the split its val set is from."""

    def validate(model, val_set, preprocess, device, dtype, queries=None):
        split = "val_camera" if "/val_camera/" in val_set.rows[0]["image"] else "val"
        calls.append(split)
        score = scores_by_split[split][calls.count(split) - 1]
        return {"official_mAP@10": score, "strict_mAP@10": score / 2, "recall@1": score, "recall@5": score, "recall@10": score,
                "t2i_R@10": score}

    return validate


def test_train_validates_on_both_and_best_follows_the_camera_val(datasets, tmp_path, monkeypatch):
    import traffic_retrieval.train.validate as validate_module
    from traffic_retrieval.commands import command_config
    from traffic_retrieval.commands.train import run as train

    data, _ = datasets
    work, run_dir = tmp_path / "work", tmp_path / "run"
    _prepare(data, work)
    calls: list[str] = []
    # val would pick epoch 2, the camera val picks epoch 3
    monkeypatch.setattr(validate_module, "validate", _fake_validate({"val": [0.5, 0.9, 0.1, 0.95], "val_camera": [0.3, 0.2, 0.8, 0.4]}, calls))
    overrides = {"work": work, "out": run_dir, "epochs": 3, "batch_size": 16, "warmup": 1, "keep_checkpoints": 0, "progress": False,
                 "resume": True, "workers": 0, "attribute_heads": 0.5}
    plain_work = tmp_path / "plain_work"  # the same prepare output without the camera split, for the weights below
    shutil.copytree(work, plain_work)
    (plain_work / "manifests" / "val_camera.jsonl").unlink()
    result = train(command_config("train", "cpu-tiny", overrides))
    assert calls == ["val", "val_camera"] * 3
    history = result["history"]
    assert all(set(r) >= {"val", "val_camera"} and r["best_split"] == "val_camera" for r in history)
    assert [r["val_camera"]["official_mAP@10"] for r in history] == [0.3, 0.2, 0.8]
    assert result["best"] == {"official_mAP@10": 0.8, "epoch": 3} and result["best_split"] == "val_camera"
    checkpoints = run_dir / "checkpoints"
    assert torch.load(checkpoints / "best.pt", weights_only=True)["epoch"] == 3
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").iterdir())
    assert b"val_camera/official_mAP@10" in events and b"val/official_mAP@10" in events
    log = (run_dir / "train.log").read_text()
    assert "best.pt is chosen by val_camera official_mAP@10" in log

    # resume: the camera-val best is restored and still decides (0.4 < 0.8 keeps epoch 3, though val rose to 0.95)
    resumed = train(command_config("train", "cpu-tiny", {**overrides, "epochs": 4}))
    assert resumed["best"] == {"official_mAP@10": 0.8, "epoch": 3} and resumed["best_split"] == "val_camera"
    assert torch.load(checkpoints / "best.pt", weights_only=True)["epoch"] == 3

    # without the camera split: val decides (epoch 2), and the trained weights are the same (validation changes nothing trained)
    monkeypatch.setattr(validate_module, "validate", _fake_validate({"val": [0.5, 0.9, 0.1]}, []))
    plain = train(command_config("train", "cpu-tiny", {**overrides, "work": plain_work, "out": tmp_path / "plain_run"}))
    assert plain["best"] == {"official_mAP@10": 0.9, "epoch": 2} and plain["best_split"] == "val"
    assert all("val_camera" not in r and r["best_split"] == "val" for r in plain["history"])
    with_camera = torch.load(checkpoints / "epoch_3.pt", weights_only=True)
    without_camera = torch.load(tmp_path / "plain_run" / "checkpoints" / "final.pt", weights_only=True)
    for key in ("state_dict", "attribute_heads"):
        assert with_camera[key].keys() == without_camera[key].keys()
        assert all(torch.equal(value, without_camera[key][name]) for name, value in with_camera[key].items()), key


def _state():
    from traffic_retrieval.train.setup import make_optimizer, make_scaler, parameter_groups
    from traffic_retrieval.train.state import TrainingState

    model = torch.nn.Linear(2, 2)
    return TrainingState(model, make_optimizer(parameter_groups(model, 0.1), 1e-3), make_scaler("cpu", None))


def test_best_tracking_by_split_and_resume_of_an_older_state():
    state = _state()
    assert state.finish_epoch({"epoch": 1, "loss": 1.0, "val": {"official_mAP@10": 0.6}})  # no camera val: val decides
    assert state.best_split == "val" and not state.finish_epoch({"epoch": 2, "loss": 1.0, "val": {"official_mAP@10": 0.5}})
    # a camera val split appears (re-prepared, resumed): its first score is the best, scores of two splits are never compared
    assert state.finish_epoch({"epoch": 3, "loss": 1.0, "val": {"official_mAP@10": 0.9}, "val_camera": {"official_mAP@10": 0.1}})
    assert state.best == {"official_mAP@10": 0.1, "epoch": 3} and state.best_split == "val_camera"
    assert not state.finish_epoch({"epoch": 4, "loss": 1.0, "val": {"official_mAP@10": 0.99}, "val_camera": {"official_mAP@10": 0.05}})

    payload = state.state_dict()
    assert payload["best_split"] == "val_camera"
    older = {k: v for k, v in payload.items() if k != "best_split"}  # saved before the camera val split existed
    older["best"] = {"official_mAP@10": 0.7, "epoch": 2}
    resumed = _state()
    resumed.load_state_dict(older)
    assert resumed.best_split == "val"  # its best was chosen on val
    assert resumed.finish_epoch({"epoch": 5, "loss": 1.0, "val_camera": {"official_mAP@10": 0.2}})
    fresh = _state()
    fresh.load_state_dict({**older, "best": None})
    assert fresh.best_split is None
    with pytest.raises(TrafficRetrievalError, match="best_split"):
        _state().load_state_dict({**payload, "best_split": "test"})


# ------------------------------------------------------------------------- soup, ablate

def test_soup_scores_on_the_camera_val_split_where_present(datasets, tmp_path, monkeypatch):
    import traffic_retrieval.train.validate as validate_module
    from traffic_retrieval.commands.soup import SoupConfig, format_report, scoring_split
    from traffic_retrieval.commands.soup import run as make_soup
    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    data, without = datasets
    assert scoring_split(data, "auto") == "val_camera" and scoring_split(without, "auto") == "val" and scoring_split(data, "val") == "val"
    paths = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        loaded = create_model("TR-Tiny-RN")
        with torch.no_grad():
            loaded.model.logit_scale.fill_(float(seed))  # tells the fake scorer which soup it sees
        paths.append(tmp_path / f"seed{seed}.pt")
        atomic_torch_save(checkpoint_payload(loaded, {"category_texts": {"pedestrian": ["a person"], "vehicle": ["a car"]}}), paths[-1])

    def fake_validate(model, val_set, preprocess, device, dtype, queries=None):
        camera = all("/val_camera/" in row["image"] for row in val_set.rows)
        scale = float(model.logit_scale)
        return {"official_mAP@10": scale if camera else -scale, "t2i_R@10": 0.0}  # the two splits rank the ingredients oppositely

    monkeypatch.setattr(validate_module, "validate", fake_validate)
    common = dict(checkpoints=paths, method="greedy", device="cpu", workers=0, progress=False)
    report = make_soup(SoupConfig(val=data, out=tmp_path / "auto.pt", **common))
    assert report["val_split"] == "val_camera" and report["kept_indices"][0] == 2 and "val_camera official_mAP@10" in format_report(report)
    assert torch.load(tmp_path / "auto.pt", weights_only=False)["soup"]["val_split"] == "val_camera"
    report = make_soup(SoupConfig(val=data, val_split="val", out=tmp_path / "val.pt", **common))
    assert report["val_split"] == "val" and report["kept_indices"][0] == 0
    with pytest.raises(TrafficRetrievalError, match="val_camera label file not found"):
        make_soup(SoupConfig(val=without, val_split="val_camera", out=tmp_path / "x.pt", **common))


def _fake_scores(value: float) -> dict:
    category = {"official_mAP@10": value, "strict_mAP@10": value / 2}
    return {"official_mAP@10": value, "strict_mAP@10": value / 2, "recall@10": value, "per_category": {"pedestrian": category, "vehicle": category}}


@pytest.mark.parametrize("camera", [True, False])
def test_ablate_decides_by_the_camera_val_where_present(datasets, tmp_path, monkeypatch, camera):
    from traffic_retrieval.commands import ablate

    data = datasets[0] if camera else datasets[1]

    def fake_train(self, setup):
        return tmp_path / "final.pt"

    def fake_score(self, checkpoint, setup, queries, gallery, ground_truth, name):
        index, split = name.split("-", 1)
        index = int(index)
        if split == "val_camera":
            assert Path(gallery) == data / "val_camera" / "val_camera_images" and Path(queries).name == "val_camera_text.txt"
        if index == 0:
            return _fake_scores(0.5)
        up = (index % 2 == 0) if split == "val_camera" else (index % 2 == 1)  # val and camera val disagree on every departure
        return _fake_scores(0.5 + (0.1 if up else -0.1) + index / 1000)

    monkeypatch.setattr(ablate.Runner, "train", fake_train)
    monkeypatch.setattr(ablate.Runner, "soup", lambda self, checkpoint, criterion: checkpoint)
    monkeypatch.setattr(ablate.Runner, "score", fake_score)
    out = tmp_path / "ablation.md"
    rows = ablate.run(ablate.AblationConfig(data=data, out=out, epochs=1, progress=False))
    departures = rows[1 : 1 + len(ablate.DEPARTURES)]
    assert [row.better for row in departures] == [(i % 2 == 0) == camera for i in range(1, 1 + len(ablate.DEPARTURES))]
    assert rows[-1].name == ablate.COMBINED_ROW and rows[-1].note == ", ".join(row.name for row in departures if row.better)
    assert all(bool(row.val_camera) == camera for row in rows)
    text = out.read_text()
    assert "| row | val official | camera val official |" in text
    assert ("camera val +" in text and "on the camera-domain val split" in text) if camera else ("| val + |" in text and "on the clean val split" in text)
    saved = json.loads((tmp_path / "ablation_work" / "ablation.json").read_text())
    assert {row["decided_by"] for row in saved} == {"val_camera" if camera else "val"}
