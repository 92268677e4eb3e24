"""Configuration and paths: a bad YAML config, a missing file or directory, or an
output path the file system refuses is a one-line error naming the key or the
path, exit 2, before any work is done."""

import pytest

BAD_CONFIGS = {
    "unknown_key": ("epoch: 3\n", "unknown key 'epoch' (known keys: "),
    "string_for_int": ("epochs: three\n", "key 'epochs' must be an integer, got 'three'"),
    "float_for_int": ("batch_size: 12.5\n", "key 'batch_size' must be an integer, got 12.5"),
    "string_for_bool": ("augment: 'yes'\n", "key 'augment' must be true or false, got 'yes'"),
    "string_for_float": ("lr: fast\n", "key 'lr' must be a number, got 'fast'"),
    "number_for_path": ("checkpoint: 3\n", "key 'checkpoint' must be a path, got 3"),
    "null_for_int": ("epochs:\n", "key 'epochs' must be an integer, got None"),
    "number_keys": ("1: 2\nfoo: 3\n", "unknown key 1"),
    "duplicate_key": ("epochs: 1\nlr: 0.1\nepochs: 2\n", "cfg.yaml:3: invalid YAML (duplicate key 'epochs' (first on line 1))"),
    "invalid_yaml": ("epochs: [1, 2\nlr: 3\n", "cfg.yaml:2: invalid YAML (expected ',' or ']'"),
    "tab_indent": ("epochs: 3\n\tlr: 1\n", "cfg.yaml:2: invalid YAML"),
    "top_level_list": ("- epochs\n- 3\n", "expected a mapping of keys to values at the top level"),
    "not_utf8": (b"model: caf\xe9\n", "cfg.yaml: not UTF-8 (byte 0xe9 at offset 10)"),
    "bad_resize_mode": ("resize_mode: stretch\n", "resize_mode must be one of pad, squash, crop, longest, shortest, got 'stretch'"),
    "bad_precision": ("precision: fp8\n", "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
}


@pytest.fixture(scope="module")
def prepared(synth_data, tmp_path_factory):
    from traffic_retrieval.cli import main

    work = tmp_path_factory.mktemp("config") / "work"
    assert main(["prepare", "--data", str(synth_data), "--work", str(work)]) == 0
    return work


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_file(case, prepared, tmp_path, cli):
    body, fragment = BAD_CONFIGS[case]
    config = tmp_path / "cfg.yaml"
    config.write_bytes(body if isinstance(body, bytes) else body.encode())
    line = cli.error(["train", "--config", config, "--work", prepared, "--out", tmp_path / "run", "--no-progress"], fragment)
    if "must be one of" not in line:
        assert str(config) in line
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_config_file_not_found(tmp_path, cli):
    cli.error(["train", "--config", tmp_path / "nope.yaml", "--work", tmp_path, "--out", tmp_path / "run"],
              f"{tmp_path / 'nope.yaml'}: config file not found (presets: ")


def test_work_without_manifests(tmp_path, cli):
    cli.error(["train", "--work", tmp_path, "--out", tmp_path / "run"], f"{tmp_path / 'manifests' / 'train.jsonl'}: manifest not found")


def test_unknown_train_manifest(prepared, tmp_path, cli):
    cli.error(["train", "--work", prepared, "--out", tmp_path / "run", "--train-manifest", "train_augmented"],
              f"{prepared / 'manifests' / 'train_augmented.jsonl'}: manifest not found")


def test_train_checkpoint_missing_or_not_a_checkpoint(prepared, tmp_path, cli):
    cli.error(["train", "--work", prepared, "--out", tmp_path / "run", "--checkpoint", tmp_path / "none.pt"], f"{tmp_path / 'none.pt'}: checkpoint not found")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    cli.error(["train", "--work", prepared, "--out", tmp_path / "run", "--checkpoint", tmp_path / "junk.pt"], f"{tmp_path / 'junk.pt'}: cannot read checkpoint")


def test_train_out_inside_a_file(prepared, tmp_path, cli):
    (tmp_path / "file").write_text("x")
    cli.error(["train", "--work", prepared, "--out", tmp_path / "file" / "run"], f"{tmp_path / 'file' / 'run'}: Not a directory")


def test_prepare_missing_data_and_work_that_is_a_file(synth_data, tmp_path, cli):
    cli.error(["prepare", "--data", tmp_path / "nodata", "--work", tmp_path / "w"], f"{tmp_path / 'nodata'}: data directory not found")
    (tmp_path / "file").write_text("x")
    cli.error(["prepare", "--data", synth_data, "--work", tmp_path / "file"], f"{tmp_path / 'file'}: exists and is not a directory")


def test_predict_missing_paths(synth_data, random_checkpoint, tmp_path, cli):
    base = ["predict", "--data", synth_data, "--out", tmp_path / "s.json", "--workers", "0", "--no-progress"]
    cli.error([*base, "--checkpoint", tmp_path / "none.pt"], f"{tmp_path / 'none.pt'}: checkpoint not found")
    cli.error(base, "give --checkpoint (a trained model) or --model/--pretrained (zero-shot)")
    cli.error([*base, "--checkpoint", random_checkpoint, "--vocabulary", tmp_path / "v.json"], f"{tmp_path / 'v.json'}: vocabulary file not found")
    cli.error([*base, "--checkpoint", random_checkpoint, "--queries", tmp_path / "q.txt"], f"{tmp_path / 'q.txt'}: query file not found")
    cli.error([*base, "--checkpoint", random_checkpoint, "--gallery", tmp_path / "g"], f"{tmp_path / 'g'}: gallery directory not found")
    cli.error(["predict", "--data", tmp_path / "nodata", "--checkpoint", random_checkpoint], f"{tmp_path / 'nodata' / 'test' / 'test_text.txt'}: query file not found")
    assert not (tmp_path / "s.json").exists()


def test_predict_out_that_is_a_directory_or_inside_a_file(synth_data, random_checkpoint, tmp_path, cli):
    base = ["predict", "--data", synth_data, "--checkpoint", random_checkpoint, "--workers", "0", "--no-progress"]
    (tmp_path / "taken").mkdir()
    cli.error([*base, "--out", tmp_path / "taken"], f"{tmp_path / 'taken'}: Is a directory")
    (tmp_path / "file").write_text("x")
    cli.error([*base, "--out", tmp_path / "file" / "s.json"], f"{tmp_path / 'file'}: exists and is not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]  # no temporary file left behind


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "lr must be a positive number"),
        (["--lr", "nan"], "lr must be a positive number"),
        (["--wd", "-0.1"], "wd must be zero or more"),
        (["--device", "gpu"], "device must be auto, cpu, cuda"),
    ],
)
def test_bad_training_numbers_and_devices_are_one_line_errors(prepared, tmp_path, cli, flags, message):
    cli.error(["train", "--work", prepared, "--out", tmp_path / "run", "--epochs", "1", "--no-progress", *flags], message)


def test_bad_predict_batch_size_is_a_one_line_error(synth_data, random_checkpoint, tmp_path, cli):
    cli.error(["predict", "--data", synth_data, "--checkpoint", random_checkpoint, "--out", tmp_path / "s.json", "--batch-size", "0"],
              "batch_size must be at least 1, got 0")
