"""The ablation end to end on a tiny dataset: the seed row, one row per departure, the combined row,
each scored on both val splits and decided by the camera-domain one (``val_camera``)."""

import json

from traffic_retrieval.cli import main
from traffic_retrieval.commands.ablate import COMBINED_ROW, DEPARTURES, SEED_ROW
from traffic_retrieval.synth import SynthConfig, generate_dataset


def test_ablate_runs_the_seed_and_every_departure(tmp_path):
    data = tmp_path / "data"
    generate_dataset(SynthConfig(out=data, seed=5, train_pedestrians=30, train_vehicles=30, val_pedestrians=12, val_vehicles=12,
                                 test_pedestrians=12, test_vehicles=12, workers=1), progress=False)
    report = tmp_path / "ablation.md"
    assert main(["ablate", "--data", str(data), "--out", str(report), "--epochs", "2", "--no-progress"]) == 0
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    results = json.loads((tmp_path / "ablation_work" / "ablation.json").read_text())
    assert rows[0].startswith(f"| {SEED_ROW} |") and [r["name"] for r in results][: 1 + len(DEPARTURES)] == [SEED_ROW, *(d[0] for d in DEPARTURES)]
    helpful = [r for r in results[1 : 1 + len(DEPARTURES)] if r["better_than_seed_on_val"]]
    assert len(rows) == len(results) == 1 + len(DEPARTURES) + (1 if helpful else 0)
    seed = results[0]
    assert seed["setup"]["text_form"] == "a3r" and seed["setup"]["router"] == "a3r" and seed["setup"]["gallery_scope"] == "all"
    assert seed["setup"]["train"]["schedule_epochs"] == 12 and seed["setup"]["train"]["random_resized_crop"] and seed["setup"]["caption_form"] == "bare"
    for row in results:
        assert 0 <= row["test"]["strict_mAP@10"] <= row["test"]["official_mAP@10"] <= 1
        assert set(row["test"]["per_category"]) == {"pedestrian", "vehicle"}
    assert "| row | val official | camera val official | camera val + |" in text and "on the camera-domain val split" in text
    for row in results:  # both val splits scored; the camera-domain one decides
        assert row["decided_by"] == "val_camera" and 0 <= row["val_camera"]["official_mAP@10"] <= 1 and 0 <= row["val"]["official_mAP@10"] <= 1
    for row in results[1:1 + len(DEPARTURES)]:  # one change from the seed row each
        assert row["better_than_seed_on_val"] == (row["val_camera"]["official_mAP@10"] > seed["val_camera"]["official_mAP@10"])
    if helpful:
        assert results[-1]["name"] == COMBINED_ROW and all(r["name"] in results[-1]["note"] for r in helpful)
    manifests = {p.name for p in (tmp_path / "ablation_work" / "prepared" / "manifests").iterdir()}
    assert {"train_augmented_bare.jsonl", "train_augmented_sentence.jsonl"} <= manifests


def test_a_reused_work_folder_resumes_only_the_same_training(tmp_path):
    """Rows added or changed between two ablations in one work folder never land in another row's run folder."""
    import yaml

    from traffic_retrieval.commands import command_config
    from traffic_retrieval.commands.ablate import AblationConfig, Runner
    from traffic_retrieval.config import config_to_dict

    def settings(**overrides):
        return command_config("train", "cpu-tiny", {"work": tmp_path / "prepared", "out": tmp_path / "run0", "epochs": 2, **overrides})

    for number, overrides in ((1, {"resize_mode": "pad"}), (2, {"loss": "clip"})):  # two runs of an earlier ablation
        (tmp_path / f"run{number}").mkdir()
        (tmp_path / f"run{number}" / "config.yaml").write_text(yaml.safe_dump(config_to_dict(settings(**overrides))))
    runner = Runner(AblationConfig(), tmp_path)
    assert runner.run_folder(settings(loss="clip", progress=False, keep_checkpoints=3)) == tmp_path / "run2"  # what it reports or keeps: the same training
    assert runner.run_folder(settings(augment_level="camera-wide")) == tmp_path / "run3"  # another training: a new folder
    assert runner.run_folder(settings(resize_mode="pad")) == tmp_path / "run1"
    assert runner.run_folder(settings(resize_mode="pad")) == tmp_path / "run4"  # a folder is claimed once per ablation
