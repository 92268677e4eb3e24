"""The ablation end to end on a tiny dataset: every stage runs and is reported."""

import json

from traffic_retrieval.commands.ablate import STAGES
from traffic_retrieval.cli import main
from traffic_retrieval.synth import SynthConfig, generate_dataset


def test_ablate_runs_every_stage_and_writes_the_table(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(SynthConfig(out=data, seed=5, train_pedestrians=40, train_vehicles=40, val_pedestrians=16, val_vehicles=16,
                                 test_pedestrians=16, test_vehicles=16, workers=1), progress=False)
    report = tmp_path / "ablation.md"
    assert main(["ablate", "--data", str(data), "--out", str(report), "--epochs", "2"]) == 0
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) == 1 + len(STAGES)
    assert rows[0].startswith("| plain") and all(name in text for name, _, _ in STAGES)
    results = json.loads((tmp_path / "ablation_work" / "ablation.json").read_text())
    for row in results:
        assert 0 <= row["test"]["strict_mAP@10"] <= row["test"]["official_mAP@10"] <= 1
        assert set(row["test"]["per_category"]) == {"pedestrian", "vehicle"}
    # a stage is kept only when it raised the val score over the last kept row
    best = results[0]["val"]["official_mAP@10"]
    for row in results[1:]:
        assert row["kept"] == (row["val"]["official_mAP@10"] > best)
        if row["kept"]:
            best = row["val"]["official_mAP@10"]
    assert (tmp_path / "ablation_work" / "prepared" / "manifests").is_dir()
