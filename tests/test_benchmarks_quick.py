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
