from pathlib import Path

import pytest

from traffic_retrieval.config import build_config, config_to_dict
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.commands import command_config
from traffic_retrieval.commands.train import TrainConfig


def test_presets_load_and_flags_win(tmp_path):
    config = build_config(TrainConfig, "cpu-tiny", {"epochs": 2, "work": tmp_path})
    assert config.model == "TR-Tiny-RN" and config.epochs == 2 and config.work == tmp_path
    seed = command_config("train", "a3r-vit-bigg", {"epochs": 3})
    assert (seed.model, seed.pretrained, seed.lr, seed.wd, seed.batch_size, seed.warmup, seed.epochs) == (
        "ViT-bigG-14", "laion2b_s39b_b160k", 4e-7, 0.01, 25, 10000, 3)
    assert config_to_dict(config)["work"] == str(tmp_path)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("epochz: 3\n", "unknown key 'epochz'"),
        ("epochs: three\n", "key 'epochs' must be an integer"),
        ("augment: 1\n", "key 'augment' must be true or false"),
        ("lr: fast\n", "key 'lr' must be a number"),
        ("- a\n- b\n", "expected a mapping"),
        ("epochs: [1\n", "invalid YAML"),
    ],
)
def test_bad_config_files_give_one_line_errors_naming_the_key(tmp_path, yaml_text, message):
    path = tmp_path / "train.yaml"
    path.write_text(yaml_text)
    with pytest.raises(TrafficRetrievalError, match=message) as error:
        build_config(TrainConfig, path, {})
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_config_file_names_the_path():
    with pytest.raises(TrafficRetrievalError, match="nope.yaml: config file not found"):
        build_config(TrainConfig, Path("nope.yaml"), {})
