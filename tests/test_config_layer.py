"""The config layer: one declaration per setting gives its type check, range, flag,
default and help; nested groups are YAML mappings and prefixed flags; every command
takes --config; bad values are one-line errors before any model loads."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from traffic_retrieval.cli import build_parser, main
from traffic_retrieval.commands import COMMANDS
from traffic_retrieval.config import (RuntimeOptions, add_config_arguments, build_config, checked, config_from_args, config_from_dict,
                                      config_to_dict, option)
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.options import Device, Precision


@dataclass
class Inner:
    enabled: bool = option(False, flag="--inner", help="switch the group on")
    size: int = option(5, minimum=1, help="a size")


@dataclass
class Outer(RuntimeOptions):
    name: str = option("x", help="a name")
    rate: float = option(0.5, positive=True, help="a rate")
    items: list[str] = option(default_factory=list, help="some items")
    count: int | None = option(None, minimum=0, maximum=10, help="optional count")
    inner: Inner = field(default_factory=Inner)


def parse(argv: list[str]) -> Outer:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, Outer)
    return config_from_args(Outer, parser.parse_args(argv))


def test_flags_are_generated_from_the_declaration_and_only_given_flags_override():
    assert parse([]) == Outer()
    config = parse(["--name", "y", "--precision", "bf16", "--device", "cuda:1", "--items", "a", "b", "--inner", "--inner-size", "7", "--count", "3"])
    assert (config.name, config.precision, config.device, config.items, config.count) == ("y", "bf16", "cuda:1", ["a", "b"], 3)
    assert config.inner == Inner(enabled=True, size=7) and config.rate == 0.5


def test_yaml_nested_mapping_then_flags_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\ninner:\n  size: 9\n  enabled: true\n")
    config = parse(["--config", str(path), "--inner-size", "2"])
    assert config.name == "from-yaml" and config.inner == Inner(enabled=True, size=2)
    assert config_to_dict(config)["inner"] == {"enabled": True, "size": 2}
    assert config_from_dict(Outer, config_to_dict(config)) == config  # round trip


@pytest.mark.parametrize("values, message", [
    ({"precision": "amp"}, "precision must be one of auto, fp32, bf16, fp16, got 'amp'"),
    ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"rate": 0}, "rate must be a positive number, got 0.0"),
    ({"rate": float("nan")}, "rate must be a positive number, got nan"),
    ({"count": -1}, "count must be zero or more, got -1"),
    ({"count": 11}, "count must be at most 10, got 11"),
    ({"inner": {"size": 0}}, "inner.size must be at least 1, got 0"),
    ({"inner": {"sise": 1}}, "unknown key 'inner.sise'"),
    ({"inner": 3}, "expected a mapping of keys to values for 'inner'"),
    ({"items": "a"}, "key 'items' must be a list"),
])
def test_bad_values_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(TrafficRetrievalError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        config_from_dict(Outer, values)
    assert "\n" not in str(error.value)


def test_configs_made_in_code_are_checked_the_same_way():
    assert checked(Outer(rate=2.0)).rate == 2.0
    with pytest.raises(TrafficRetrievalError, match="inner.size must be at least 1"):
        checked(Outer(inner=Inner(size=0)))


def test_the_allowed_values_are_declared_once_and_reach_every_command_that_runs_a_model():
    import typing

    from traffic_retrieval.cli import command_module

    runs_a_model = {"train", "predict", "augment", "soup", "index", "search", "serve"}
    for name in COMMANDS:
        hints = typing.get_type_hints(command_module(name).Config, include_extras=True)
        if name in runs_a_model:
            assert hints["precision"] == Precision and hints["device"] == Device, name
        else:
            assert "precision" not in hints and "device" not in hints, name


def test_trusting_a_checkpoint_is_an_explicit_opt_in_on_every_command_that_loads_one():
    import typing

    from traffic_retrieval.cli import command_module

    for name in ("train", "predict", "augment", "soup", "index", "search", "serve"):
        config_class = command_module(name).Config
        assert typing.get_type_hints(config_class)["trust_checkpoint"] is bool, name
        assert config_class().trust_checkpoint is False, name
    args = build_parser().parse_args(["search", "--index", "I", "q", "--trust-checkpoint"])
    from traffic_retrieval.commands.search import SearchConfig

    assert config_from_args(SearchConfig, args).trust_checkpoint is True


def test_every_command_takes_a_config_file_and_help_lists_choices(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        text = capsys.readouterr().out
        assert "--config CONFIG" in text, name
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--precision {auto,fp32,bf16,fp16}" in text and "--rerank-candidates" in text and "--text-form {sentence,a3r}" in text and "--gallery-scope {routed,all,soft}" in text and "--gallery-norm {none,center}" in text


@pytest.mark.parametrize("argv, message", [
    (["serve", "--index", "INDEX", "--precision", "amp"], "precision must be one of auto, fp32, bf16, fp16, got 'amp'"),
    (["serve", "--index", "INDEX", "--log-level", "bogus"], "log_level must be one of"),
    (["train", "--work", "W", "--out", "R", "--checkpoint", "X.pt", "--resize-mode", "bogus"], "resize_mode must be one of"),
    (["predict", "--data", "D", "--checkpoint", "X.pt", "--rerank", "--rerank-candidates", "0"], "rerank.candidates must be at least 1"),
    (["index", "--images", "I", "--checkpoint", "X.pt", "--out", "O", "--kind", "annoy"], "kind must be one of auto, flat, hnsw, ivf, ivfpq"),
    (["search", "--index", "I", "q", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_settings_fail_before_any_file_or_model_is_touched(argv, message, capsys, monkeypatch):
    import traffic_retrieval.model.factory as factory

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(factory, "load_checkpoint", no_model)
    monkeypatch.setattr(factory, "create_model", no_model)
    assert main(argv) == 2  # none of the paths exist: the settings are refused first
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_usage_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--top-k", "ten"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: traffic-retrieval predict: argument --top-k: invalid int value")


def test_train_preset_is_the_base_and_a_config_file_replaces_it(tmp_path):
    from traffic_retrieval.commands.train import TrainConfig

    assert build_config(TrainConfig, "cpu-tiny", {}).resize_mode == "squash"
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 3\n")
    parser = build_parser()
    config = config_from_args(TrainConfig, parser.parse_args(["train", "--config", str(path)]), preset="cpu-tiny")
    assert config.epochs == 3 and config.resize_mode is None  # the file, not the preset, below the flags
    assert Path(path).is_file()
