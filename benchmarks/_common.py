"""Shared pieces of the benchmarks: the machine description, synthetic data made
once and reused, interleaved repetitions, and the atomic JSON result file.

Every benchmark runs both sides in one invocation, alternating repetitions
(ours, peer, ours, peer, ...), so background load hits both alike; the medians
are compared and ``os.getloadavg()`` is recorded before and after.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Generated data (datasets, caches, run folders) lives outside the repository.
DEFAULT_CACHE_DIR = Path(os.environ.get("TRB_BENCH_CACHE", Path(os.environ.get("TMPDIR", "/tmp")) / "traffic-retrieval-bench"))

if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    import open_clip
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values):
    return statistics.median(values) if values else None


RESULTS_DIR_HELP = "folder for the result file (default benchmarks/results; with --quick a new temporary folder)"


def results_dir_for(results_dir: Path | None, quick: bool) -> Path:
    """The folder asked for; else a new temporary one for a ``--quick`` smoke run (it must
    not overwrite the recorded results), else benchmarks/results."""
    if results_dir is not None:
        return Path(results_dir)
    return Path(tempfile.mkdtemp(prefix="trb-quick-")) if quick else RESULTS_DIR


def write_result(name: str, payload: dict, results_dir: Path | None = None) -> Path:
    """benchmarks/results/<name>.json, written atomically (temp file + rename)."""
    from traffic_retrieval.io import atomic_write_json

    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    atomic_write_json(path, {"benchmark": name, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload})
    return path


def synthetic_dataset(cache_dir: Path, **sizes) -> Path:
    """A synthetic dataset in the challenge layout, made once per set of sizes and reused."""
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    config = SynthConfig(out=Path("."), **sizes)
    tag = "-".join(str(getattr(config, key)) for key in ("seed", "train_pedestrians", "train_vehicles", "val_pedestrians", "val_vehicles", "test_pedestrians", "test_vehicles"))
    out = Path(cache_dir) / f"synth-{tag}"
    if not (out / "synth_config.json").is_file():  # written last: its presence means complete
        config.out, config.overwrite = out, True
        print(f"[bench] generating synthetic dataset {out} ...", file=sys.stderr, flush=True)
        generate_dataset(config, progress=False)
    return out


def prepared_work(data_dir: Path) -> Path:
    """``prepare`` output (manifests) for a dataset, made once."""
    from traffic_retrieval.commands.prepare import PrepareConfig
    from traffic_retrieval.commands.prepare import run as prepare

    work = Path(str(data_dir) + "-work")
    if not (work / "manifests" / "train.jsonl").is_file():
        prepare(PrepareConfig(data=data_dir, work=work))
    return work


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_cpu_seconds() -> float:
    times = os.times()  # this process and its waited-for children (subprocess runs, DataLoader workers)
    return times.user + times.system + times.children_user + times.children_system


class CpuLoad:
    """What else used the CPUs while a block ran: ``others_busy_fraction`` is the
    machine's busy CPU time not spent by this process or its children, as a
    fraction of all cores' time (0: nobody else, 1: every core taken)."""

    def __enter__(self):
        self.jiffies, self.own = _cpu_jiffies(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        busy, total = _cpu_jiffies()
        busy, total = busy - self.jiffies[0], total - self.jiffies[1]
        own = _own_cpu_seconds() - self.own
        hz = os.sysconf("SC_CLK_TCK")
        self.result = {
            "machine_busy_fraction": round(busy / total, 3) if total else None,
            "others_busy_fraction": round(max(0.0, busy / hz - own) / (total / hz), 3) if total else None,
        }
        return False


def wait_for_quiet(max_seconds: float, threshold: float = 0.25, window: float = 3.0) -> dict:
    """Wait (up to ``max_seconds``) until other processes use under ``threshold`` of the
    CPUs over a ``window``: other engineers' tests share this machine."""
    started = time.perf_counter()
    while True:
        with CpuLoad() as load:
            time.sleep(window)
        waited = time.perf_counter() - started
        others = load.result["others_busy_fraction"]
        if others is None or others < threshold or waited >= max_seconds:
            return {"waited_seconds": round(waited, 1), "others_busy_fraction": others, "quiet": others is not None and others < threshold}


def interleave(sides: dict, repetitions: int, warmup: int = 1) -> dict:
    """Run each side's callable ``warmup`` times (discarded), then ``repetitions``
    times alternating A B A B ...; returns per-side lists of what they returned
    (dicts get ``cpu_load``: how busy the machine was with others meanwhile)."""
    for _ in range(warmup):
        for run in sides.values():
            run()
    results = {name: [] for name in sides}
    for _ in range(repetitions):
        for name, run in sides.items():
            with CpuLoad() as load:
                value = run()
            if isinstance(value, dict):
                value = value | {"cpu_load": load.result}
            results[name].append(value)
    return results


def paired_speedup(ours: list[dict], peer: list[dict], key: str, higher_is_better: bool = True) -> float | None:
    """Median over repetitions of ours/peer from the same round (robust to load that drifts between rounds)."""
    ratios = [(a[key] / b[key]) if higher_is_better else (b[key] / a[key]) for a, b in zip(ours, peer) if a.get(key) and b.get(key)]
    return median(ratios)


def timer():
    return time.perf_counter()


def start_server(index: Path, *flags: str):
    """``traffic-retrieval serve --index INDEX --port 0 FLAGS`` in a subprocess; returns (process, base URL)."""
    import re
    import subprocess

    command = [sys.executable, "-m", "traffic_retrieval", "serve", "--index", str(index), "--port", "0", "--log-level", "warning", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    line = process.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
    if not match:
        process.kill()
        raise SystemExit(f"the server did not start: {line}{process.stderr.read()}")
    return process, match.group(1)


def stop_server(process) -> None:
    """Ctrl-C, as a user stops it; killed if it does not stop within 30 s."""
    import signal
    import subprocess

    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
