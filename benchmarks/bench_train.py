"""Training throughput: ``traffic-retrieval train`` vs ``python -m open_clip_train.main``.

Same model (TR-Tiny-RN, random init, registered with open_clip_train by
``_open_clip_train_launcher.py``), same data (the synthetic train split; for
open_clip_train exported as its CSV format, ``filepath<TAB>title``), same batch
size, epochs, lr / wd / warmup, bf16 autocast (ours ``--precision bf16``,
open_clip_train ``--precision amp_bf16``), 2 data workers, 2 torch threads, CPU,
no validation on either side. Each side keeps its own defaults otherwise: ours
the shipped recipe (decoded-image cache, surveillance augmentation,
multi-positive loss, trimmed text), open_clip_train its CSV loader (JPEG decode
and RandomResizedCrop in the workers every epoch) and CLIP loss.

Measured per run, both sides alike:
- steady-state samples/s: the samples of epochs 2..N over the time of their
  training steps (each launcher records when an epoch's steps start and end;
  checkpoint saving and start-up are excluded, the data loader's per-epoch start
  is included);
- whole-run wall time of the subprocess (start-up, ours' cache load, saves).
Ours' first run builds the decoded-image cache; it is timed separately (cold)
and not part of the comparison. Runs alternate ours, peer, ours, peer, ...
Goal documented in benchmarks/README.md: ours >= 1.2x open_clip_train's steady samples/s.

``--quick`` is a smoke run (well under a minute) that installs nothing and needs no
network: it runs open_clip_train only when its extra packages are already importable
(an earlier full run installed them in the cache folder), else only our side, and
says so; its result goes to a temporary folder unless ``--results-dir`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GOAL_SPEEDUP = 1.2
# open_clip_train's [training] extra that the project's venv does not carry; installed
# with plain pip into a folder of the benchmark cache and put on the peer's PYTHONPATH only.
PEER_PACKAGES = ["pandas", "python-dateutil", "six", "pytz", "tzdata", "webdataset>=0.2.5,<=0.2.86", "braceexpand"]
PEER_IMPORTS = "import pandas, webdataset, braceexpand, fsspec, open_clip_train.main"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pedestrians", type=int, default=1708)
    parser.add_argument("--train-vehicles", type=int, default=852)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2: epoch 1 is warm-up)")
    parser.add_argument("--repetitions", type=int, default=2, help="runs per side (interleaved)")
    parser.add_argument("--model", default="TR-Tiny-RN")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--no-cold-run", dest="cold_run", action="store_false", help="skip the untimed first run that builds ours' image cache")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE_DIR)
    parser.add_argument("--results-dir", type=Path, default=None, help=_common.RESULTS_DIR_HELP)
    parser.add_argument("--name", default=None, help="result file name (default bench_train, bench_train_quick with --quick)")
    parser.add_argument("--ours-only", action="store_true", help="run only our side (no open_clip_train, nothing installed)")
    parser.add_argument("--wait-quiet", type=float, default=180, help="first wait up to this many seconds for other processes to leave the CPUs (0: do not wait)")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 60 s; open_clip_train only if already installed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.wait_quiet = 0
        args.train_pedestrians, args.train_vehicles, args.epochs, args.repetitions = 64, 32, 2, 1
        args.batch_size, args.cold_run = min(args.batch_size, 32), False
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    args.name = args.name or ("bench_train_quick" if args.quick else "bench_train")
    args.results_dir = _common.results_dir_for(args.results_dir, args.quick)
    return args


def peer_pythonpath(cache_dir: Path, install: bool = True) -> str | None:
    """A PYTHONPATH with open_clip_train's data dependencies, installed once if missing
    (``install`` False: None when they are not there already)."""
    site = Path(cache_dir) / "peer-site"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = os.environ | {"PYTHONPATH": path}
    if subprocess.run([sys.executable, "-c", PEER_IMPORTS], env=env, capture_output=True).returncode != 0:
        if not install:
            return None
        print(f"[bench_train] installing open_clip_train's data dependencies into {site}", file=sys.stderr, flush=True)
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *PEER_PACKAGES], capture_output=True, text=True)
        if install.returncode != 0:
            raise SystemExit(f"bench_train: pip could not install {' '.join(PEER_PACKAGES)}: {install.stderr.strip().splitlines()[-1:]}")
        check = subprocess.run([sys.executable, "-c", PEER_IMPORTS], env=env, capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"bench_train: open_clip_train cannot be imported: {check.stderr.strip().splitlines()[-1]}")
    return path


def export_open_clip_csv(rows: list[dict], path: Path) -> Path:
    """open_clip_train's CSV dataset: a header ``filepath<TAB>title`` and one pair per line."""
    from traffic_retrieval.io import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows([row["image"], row["text"]] for row in rows)
    return path


def common_flags(args, epochs: int) -> list[str]:
    return ["--model", args.model, "--batch-size", str(args.batch_size), "--epochs", str(epochs), "--workers", str(args.workers),
            "--lr", str(args.lr), "--wd", str(args.wd), "--warmup", str(args.warmup), "--seed", "0"]


def ours_command(args, work: Path, run_dir: Path, epochs: int) -> list[str]:
    return [sys.executable, str(_common.BENCH_DIR / "_ours_train_launcher.py"), "--work", str(work), "--out", str(run_dir),
            *common_flags(args, epochs), "--precision", "bf16", "--device", "cpu", "--threads", str(args.threads),
            "--no-validate", "--no-progress"]


def peer_command(args, train_csv: Path, logs: Path, name: str, epochs: int) -> list[str]:
    return [sys.executable, str(_common.BENCH_DIR / "_open_clip_train_launcher.py"), "--train-data", str(train_csv),
            "--dataset-type", "csv", "--csv-separator", "\t", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            *common_flags(args, epochs), "--precision", "amp_bf16", "--device", "cpu", "--logs", str(logs), "--name", name,
            "--log-every-n-steps", "10", "--report-to", ""]


def run_timed(command: list[str], env: dict, epoch_file: Path, log_file: Path) -> dict:
    epoch_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with log_file.open("w") as log:
        completed = subprocess.run(command, env=env | {"TRB_EPOCH_TIMES": str(epoch_file)}, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"bench_train: {' '.join(command[:3])} ... failed (exit {completed.returncode}): {' | '.join(tail)}")
    records = [json.loads(line) for line in epoch_file.read_text().splitlines() if line.strip()]
    return {"wall_seconds": wall, "epochs": records}


def ours_epochs(records: list[dict]) -> list[dict]:
    """Epochs 2..N as the trainer's ``on_epoch_end`` hook timed them (``_ours_train_launcher.py``)."""
    return [{"epoch": r["epoch"], "seconds": r["seconds"], "samples": r["samples"]} for r in records if r["epoch"] >= 2]


def peer_epochs(records: list[dict]) -> list[dict]:
    return [{"epoch": r["epoch"], "seconds": r["end"] - r["start"], "samples": r["samples"]} for r in records if r["epoch"] >= 2]


def peer_reported_rate(log_dir: Path) -> float | None:
    """open_clip_train's own samples/s of its last epoch's log lines (median), for cross-checking."""
    log = log_dir / "out.log"
    if not log.is_file():
        return None
    rates = {}
    for line in log.read_text(errors="replace").splitlines():
        match = re.search(r"Train Epoch: (\d+) .*?Batch \(t\): [\d.]+, ([\d.e+]+)/s", line)
        if match:
            rates.setdefault(int(match.group(1)), []).append(float(match.group(2)))
    return _common.median(rates[max(rates)]) if rates else None


def summarize(run: dict, epochs: list[dict]) -> dict:
    seconds = sum(e["seconds"] for e in epochs)
    samples = sum(e["samples"] for e in epochs)
    return {"wall_seconds": run["wall_seconds"], "steady_epochs": epochs, "steady_samples_per_second": samples / seconds if seconds else None}


def peer_environment(args) -> tuple[dict | None, str | None]:
    """(the peer's environment, or None with the reason it does not run)."""
    threads = {"OMP_NUM_THREADS": str(args.threads)}
    if args.ours_only:
        return None, "--ours-only"
    path = peer_pythonpath(args.cache_dir, install=not args.quick)
    if path is None:
        return None, "its extra packages (pandas, webdataset, ...) are not installed and --quick installs nothing; a full run installs them"
    return os.environ | threads | {"PYTHONPATH": path}, None


def main(argv=None) -> int:
    args = parse_args(argv)
    data = _common.synthetic_dataset(args.cache_dir, train_pedestrians=args.train_pedestrians, train_vehicles=args.train_vehicles,
                                     val_pedestrians=0, val_vehicles=0, test_pedestrians=8, test_vehicles=4)
    work = _common.prepared_work(data)
    from traffic_retrieval.io import read_jsonl

    rows = read_jsonl(work / "manifests" / "train.jsonl")
    train_csv = export_open_clip_csv(rows, work / "open_clip_train.tsv")
    runs_dir = Path(args.cache_dir) / f"train-runs-{os.getpid()}"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True)
    ours_env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    peer_env, peer_skipped = peer_environment(args)
    if peer_skipped:
        print(f"[bench_train] open_clip_train not run ({peer_skipped}): measuring our side only", file=sys.stderr, flush=True)

    quiet = _common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    # cold: ours builds (or loads) its decoded-image cache; timed, not compared
    cold = None
    if args.cold_run:
        cold = run_timed(ours_command(args, work, runs_dir / "ours-cold", 1), ours_env, runs_dir / "ours-cold.epochs", runs_dir / "ours-cold.log")
    counter = {"ours": 0, "peer": 0}

    def ours():
        counter["ours"] += 1
        run_dir = runs_dir / f"ours-{counter['ours']}"
        run = run_timed(ours_command(args, work, run_dir, args.epochs), ours_env, runs_dir / f"ours-{counter['ours']}.epochs", runs_dir / f"ours-{counter['ours']}.log")
        result = summarize(run, ours_epochs(run["epochs"])) | {"reported_samples_per_second": run["epochs"][-1]["samples_per_second_reported"]}
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[bench_train] ours: {result['steady_samples_per_second']:.1f} samples/s steady, {result['wall_seconds']:.1f} s wall", file=sys.stderr, flush=True)
        return result

    def peer():
        counter["peer"] += 1
        name = f"peer-{counter['peer']}"
        run = run_timed(peer_command(args, train_csv, runs_dir, name, args.epochs), peer_env, runs_dir / f"{name}.epochs", runs_dir / f"{name}.log")
        result = summarize(run, peer_epochs(run["epochs"])) | {"reported_samples_per_second": peer_reported_rate(runs_dir / name)}
        shutil.rmtree(runs_dir / name, ignore_errors=True)
        print(f"[bench_train] peer: {result['steady_samples_per_second']:.1f} samples/s steady, {result['wall_seconds']:.1f} s wall", file=sys.stderr, flush=True)
        return result

    load_before = _common.loadavg()
    reps = _common.interleave({"ours": ours} if peer_skipped else {"ours": ours, "peer": peer}, args.repetitions, warmup=0)
    load_after = _common.loadavg()
    shutil.rmtree(runs_dir, ignore_errors=True)
    medians = {side: {"steady_samples_per_second": _common.median([r["steady_samples_per_second"] for r in runs]),
                      "wall_seconds": _common.median([r["wall_seconds"] for r in runs])} for side, runs in reps.items()}
    speedup = wall_speedup = None
    if "peer" in medians:
        speedup = medians["ours"]["steady_samples_per_second"] / medians["peer"]["steady_samples_per_second"]
        wall_speedup = medians["peer"]["wall_seconds"] / medians["ours"]["wall_seconds"]
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("results_dir",)}
    path = _common.write_result(args.name, {
        "compares": "traffic-retrieval train (shipped recipe) vs python -m open_clip_train.main (csv data), same model/batch/epochs/bf16 autocast",
        "metric": "steady-state training samples per second over epochs 2..N (higher is better) and whole-run wall seconds; median of interleaved runs",
        "goal": f"ours >= {GOAL_SPEEDUP}x peer steady samples/s",
        "machine": _common.machine(),
        "parameters": params | {"train_pairs": len(rows), "steps_per_epoch": len(rows) // args.batch_size,
                                 "ours_command": ours_command(args, Path("WORK"), Path("RUN"), args.epochs)[1:],
                                 "peer_command": peer_command(args, Path("train.tsv"), Path("LOGS"), "NAME", args.epochs)[1:]},
        "peer_skipped": peer_skipped,
        "quiet_wait": quiet,
        "ours_cold_run": cold and {"epochs": 1, "wall_seconds": cold["wall_seconds"], "note": "first run: builds ours' decoded-image cache (or loads it when an earlier invocation built it)"},
        "repetitions": reps,
        "medians": medians,
        "speedup": speedup,
        "speedup_paired_median": _common.paired_speedup(reps["ours"], reps["peer"], "steady_samples_per_second") if "peer" in reps else None,
        "wall_time_speedup": wall_speedup,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "goal_met": speedup >= GOAL_SPEEDUP if speedup is not None else None,
    }, args.results_dir)
    ours_text = f"ours {medians['ours']['steady_samples_per_second']:.1f} samples/s steady (wall {medians['ours']['wall_seconds']:.1f} s)"
    if peer_skipped:
        comparison = f"{ours_text}; open_clip_train not run ({peer_skipped})"
    else:
        comparison = (f"{ours_text} vs open_clip_train {medians['peer']['steady_samples_per_second']:.1f} (wall {medians['peer']['wall_seconds']:.1f} s) "
                      f"= {speedup:.2f}x steady, {wall_speedup:.2f}x wall; goal >= {GOAL_SPEEDUP}x")
    print(f"bench_train: {args.model}, batch {args.batch_size}, {len(rows)} pairs x {args.epochs} epochs: {comparison}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
