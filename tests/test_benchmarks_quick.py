"""Every benchmark's ``--quick`` smoke run, each in its own process as a user runs it,
so a benchmark broken by a change elsewhere fails the tests. Quick runs write their
result to a temporary folder, never over the recorded ``benchmarks/results``."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARKS = ["bench_encode", "bench_train", "bench_rank_memory", "bench_search", "bench_serve", "bench_serve_memory", "bench_checkpoint_disk", "bench_transfer"]


def test_every_benchmark_is_listed_here():
    assert sorted(p.stem for p in BENCH_DIR.glob("bench_*.py")) == sorted(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_finishes_and_leaves_the_recorded_results_alone(name):
    recorded = {p.name: p.stat().st_mtime_ns for p in (BENCH_DIR / "results").glob("*")}
    environment = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    finished = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), "--quick"], capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-3000:]
    written = re.findall(r"wrote (\S+\.json)", finished.stdout)
    assert written, finished.stdout[-2000:]
    result = Path(written[-1])
    assert result.is_file() and BENCH_DIR not in result.resolve().parents
    assert {p.name: p.stat().st_mtime_ns for p in (BENCH_DIR / "results").glob("*")} == recorded
    shutil.rmtree(result.parent)  # the quick run's own temporary folder


def _bench_transfer():
    """benchmarks/bench_transfer.py as a module (its parse_args and helpers, no run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_transfer_under_test", BENCH_DIR / "bench_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_transfer_parses_the_renderer_the_look_and_training_overrides(tmp_path):
    bench = _bench_transfer()
    args = bench.parse_args(["--quick", "--renderer", "foreign", "--look", "holdout", "--set", "augment=true", "--set", "augment_level=camera",
                             "--set", "augment_schedule=ramp", "--set", "consistency=0.5", "--results-dir", str(tmp_path)])
    assert (args.renderer, args.look, args.name) == ("foreign", "holdout", "bench_transfer_foreign_holdout_quick")
    assert (args.foreign_train, args.foreign_val, args.foreign_test) == (80, 24, 24)
    assert args.train_overrides == {"augment": True, "augment_level": "camera", "augment_schedule": "ramp", "consistency": 0.5}
    args = bench.parse_args(["--renderer", "foreign", "--results-dir", str(tmp_path)])
    assert (args.look, args.name, args.foreign_train, args.foreign_val, args.foreign_test) == ("dev", "bench_transfer_foreign_dev", 4000, 400, 1200)
    args = bench.parse_args(["--results-dir", str(tmp_path)])
    assert (args.renderer, args.look, args.name, args.train_overrides) == ("ours", None, "bench_transfer", {})
    assert bench.parse_args(["--renderer", "foreign", "--name", "mine", "--results-dir", str(tmp_path)]).name == "mine"
    # every variant but the checkpoint's own recipe sets the gallery normalisation and BatchNorm explicitly
    assert bench.VARIANT_FLAGS["recipe"] == "" and set(bench.VARIANTS) == set(bench.VARIANT_FLAGS)
    assert all({"gallery_norm", "gallery_bn", "image_tta"} <= set(overrides) for name, (overrides, _) in bench.VARIANTS.items() if name != "recipe")


@pytest.mark.parametrize("argv, message", [
    (["--set", "no_such_key=1"], "unknown key 'no_such_key'"),
    (["--set", "augment_level=bogus"], "augment_level"),
    (["--set", "augment"], "KEY=VALUE"),
    (["--set", "seed=3"], "--seed"),
    (["--look", "dev"], "--renderer foreign"),
    (["--renderer", "foreign", "--train-vehicles", "3"], "--renderer ours"),
])
def test_bench_transfer_refuses_bad_arguments(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _bench_transfer().parse_args([*argv, "--results-dir", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def test_bench_transfer_renders_the_foreign_dataset_once(tmp_path):
    bench = _bench_transfer()
    sizes = {"foreign_train": 4, "foreign_val": 2, "foreign_test": 2}
    data = bench.foreign_dataset(tmp_path, "dev", 1, sizes, 1)
    assert data == tmp_path / "foreign-dev-1-4-2-2" and (data / "ground_truth" / "test_gt.txt").is_file()
    assert not (data / "val_camera").exists() and (data / "val" / "val_label.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [data.name]  # no temporary folder left
    made = (data / "ground_truth" / "test_gt.txt").stat().st_mtime_ns
    assert bench.foreign_dataset(tmp_path, "dev", 1, sizes, 1) == data
    assert (data / "ground_truth" / "test_gt.txt").stat().st_mtime_ns == made  # reused, not rendered again
