"""One run per folder (issue #12, findings 16 and 17): ``prepare --work W``,
``train --out RUN`` and ``index --out INDEX`` each hold a lock on their folder; a second
run while the first holds it is a one-line error naming the folder. A run killed with
SIGKILL can be restarted at once: the lock is a POSIX record lock, released by the
kernel when its process dies and never held by the processes it forked (DataLoader
workers outlive a killed parent by up to 5 s).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save, folder_lock
from traffic_retrieval.model.factory import checkpoint_payload, create_model
from traffic_retrieval.synth import SynthConfig, generate_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


def environment(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def wait_until(condition, process, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.02)


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def assert_refused(capsys, argv, folder: Path, command: str) -> None:
    code, err = run_cli(capsys, *argv)
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert code == 2 and err.count("error: ") == 1 and "Traceback" not in err, err
    assert line.startswith(f"error: {folder}: ") and f"another `{command}` run" in line, line


# -- the helper ------------------------------------------------------------------------------------
def test_a_second_holder_is_refused_in_this_process_too(tmp_path):
    folder = tmp_path / "W"
    with folder_lock(folder, "prepare"):
        with pytest.raises(TrafficRetrievalError) as excinfo:
            with folder_lock(folder, "prepare"):
                pass
        assert str(excinfo.value).startswith(f"{folder}: another `prepare` run")
        # the refused attempt did not drop the lock (closing any descriptor of a record-locked file would)
        probe = subprocess.run([sys.executable, "-c", HOLD, str(folder), "0"], capture_output=True, text=True, env=environment(), timeout=120)
        assert probe.returncode == 3, probe.stderr
    with folder_lock(folder, "prepare"):
        pass


HOLD = textwrap.dedent("""
    import os, sys, time
    from traffic_retrieval.errors import TrafficRetrievalError
    from traffic_retrieval.io import folder_lock

    folder, hold = sys.argv[1], float(sys.argv[2])
    try:
        with folder_lock(folder, "index"):
            if hold:
                child = os.fork()  # like a DataLoader worker forked while the lock is held
                if child == 0:
                    time.sleep(hold)
                    os._exit(0)
                print(child, flush=True)
                time.sleep(hold)
    except TrafficRetrievalError:
        sys.exit(3)
""")


def test_a_killed_holder_releases_the_lock_at_once_though_its_forked_child_lives_on(tmp_path):
    folder = tmp_path / "INDEX"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    child = int(holder.stdout.readline())
    try:
        kill(holder)
        assert os.path.exists(f"/proc/{child}")  # the forked child is still alive
        with folder_lock(folder, "index"):  # at once, no retry
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# -- prepare ---------------------------------------------------------------------------------------
SLOW_PREPARE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import traffic_retrieval.data.vocabulary as vocabulary

    def stuck(*args, **kwargs):  # manifests written, the vocabulary not yet: the run holds WORK
        Path(os.environ["MARKER"]).touch()
        time.sleep(120)
    vocabulary.extract_vocabulary = stuck
    from traffic_retrieval.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("locks") / "data"
    generate_dataset(SynthConfig(out=out, seed=4, train_pedestrians=40, train_vehicles=30, val_pedestrians=2, val_vehicles=2,
                                 test_pedestrians=10, test_vehicles=6, workers=1), progress=False)
    return out


def test_a_second_prepare_on_the_same_work_folder_is_refused_and_a_killed_one_restarts_at_once(data, tmp_path, capsys):
    work, marker = tmp_path / "work", tmp_path / "marker"
    victim = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, "prepare", "--data", str(data), "--work", str(work)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=environment(MARKER=str(marker)))
    try:
        wait_until(marker.exists, victim, "the first prepare holding its folder")
        assert_refused(capsys, ["prepare", "--data", data, "--work", work], work, "prepare")
        assert run_cli(capsys, "prepare", "--data", data, "--work", tmp_path / "other")[0] == 0  # another folder is fine
        kill(victim)
    finally:
        victim.kill()
    code, err = run_cli(capsys, "prepare", "--data", data, "--work", work)
    assert code == 0, err
    assert (work / "vehicle_vocabulary.json").is_file()


# -- train -----------------------------------------------------------------------------------------
DECODE_IN_WORKERS = textwrap.dedent("""
    import sys, time
    import traffic_retrieval.data.images as images

    images.IN_PROCESS_DECODE_MAX = 0  # DataLoader workers even for a small set, as for a real one
    decode = images.image_to_uint8_tensor
    def slow_decode(path, config):
        time.sleep(0.2)
        return decode(path, config)
    images.image_to_uint8_tensor = slow_decode
    from traffic_retrieval.cli import main
    sys.exit(main(sys.argv[1:]))
""")
TRAIN_FLAGS = ["--epochs", "1", "--batch-size", "16", "--warmup", "0", "--seed", "7", "--precision", "fp32", "--no-validate", "--no-progress"]


@pytest.fixture(scope="module")
def work(data, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("locks_work") / "work"
    assert main(["prepare", "--data", str(data), "--work", str(work)]) == 0
    return work


def test_a_second_train_on_the_same_run_folder_is_refused_and_resume_right_after_sigkill_works(work, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--work", work, "--out", run, *TRAIN_FLAGS]
    victim = subprocess.Popen([sys.executable, "-c", DECODE_IN_WORKERS, *map(str, argv), "--workers", "2"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=environment())
    try:
        workers = wait_until(lambda: children_of(victim.pid), victim, "DataLoader workers", timeout=240)
        assert_refused(capsys, [*argv, "--workers", "0"], run, "train")
        kill(victim)
    finally:
        victim.kill()
    assert any(os.path.exists(f"/proc/{pid}") for pid in workers)  # forked while the lock was held, still alive: they must not hold it
    code, err = run_cli(capsys, *argv, "--workers", "0", "--resume")  # at once
    assert code == 0, err
    assert (run / "checkpoints" / "final.pt").is_file()


# -- index -----------------------------------------------------------------------------------------
KILLABLE_INDEX = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import traffic_retrieval.data.images as images
    from traffic_retrieval.index.build import build_index
    from traffic_retrieval.index.store import IndexStore

    images.IN_PROCESS_DECODE_MAX = 0  # DataLoader workers even for a small gallery, as for a real one
    commit = IndexStore.commit_shard
    def slow_commit(self, shard, rows):  # time for the test between shards, workers alive
        committed = commit(self, shard, rows)
        time.sleep(3)
        return committed
    IndexStore.commit_shard = slow_commit
    images_dir, checkpoint, out = map(Path, sys.argv[1:])
    build_index(images_dir, checkpoint, out, shard_size=4, batch_size=4, workers=2, progress=False, device="cpu")
""")


def test_a_second_index_run_is_refused_and_a_killed_one_resumes_at_once(data, tmp_path, capsys):
    import sqlite3

    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-RN")), checkpoint)
    gallery, out = data / "test" / "test_images", tmp_path / "INDEX"
    victim = subprocess.Popen([sys.executable, "-c", KILLABLE_INDEX, str(gallery), str(checkpoint), str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=environment())

    def committed() -> int:
        try:
            with sqlite3.connect(f"{(out / 'meta.sqlite').as_uri()}?mode=ro", uri=True, timeout=5) as db:
                return db.execute("SELECT count(*) FROM images WHERE state != 'pending'").fetchone()[0]
        except sqlite3.Error:
            return 0

    try:
        wait_until(lambda: committed() and children_of(victim.pid), victim, "a committed shard with DataLoader workers alive", timeout=240)
        workers = children_of(victim.pid)
        argv = ["index", "--images", gallery, "--checkpoint", checkpoint, "--out", out, "--shard-size", "4", "--batch-size", "4", "--workers", "0",
                "--device", "cpu", "--no-progress"]
        assert_refused(capsys, argv, out, "index")
        kill(victim)
    finally:
        victim.kill()
    assert any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert not (out / "index.json").exists()
    report = build_index(IndexConfig(images=gallery, checkpoint=checkpoint, out=out, shard_size=4, batch_size=4, workers=0, progress=False,
                                     device="cpu"))  # at once
    assert report["count"] == 16 and 0 < report["resumed"] < 16, json.dumps(report)[:500]
