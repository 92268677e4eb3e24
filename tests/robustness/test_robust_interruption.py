"""Interruption: a SIGKILLed ``train`` resumed with ``--resume`` ends with exactly
the weights of an uninterrupted run (CPU, fp32, fixed seed); a SIGKILLed
``predict`` never leaves a partial submission; a damaged ``last.pt`` is a
one-line error. (Index kill/resume is tested with the index.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_FLAGS = ["--epochs", "3", "--batch-size", "16", "--warmup", "2", "--seed", "7", "--precision", "fp32", "--workers", "0",
               "--threads", "1", "--no-progress"]


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "traffic_retrieval", *map(str, argv)]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(path: Path, process, timeout: float = 240) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"{process.args} ended ({process.returncode}) before {path} appeared: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


@pytest.fixture(scope="module")
def work(tmp_path_factory, make):
    """A small prepared dataset; two training images are broken (zero bytes, truncated)."""
    from traffic_retrieval.cli import main
    from traffic_retrieval.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("interrupt")
    data = root / "data"
    generate_dataset(SynthConfig(out=data, seed=11, train_pedestrians=40, train_vehicles=24, val_pedestrians=4, val_vehicles=4,
                                 test_pedestrians=4, test_vehicles=4, workers=1), progress=False)
    whole = make.jpeg_bytes((64, 64))
    (data / "train" / "train_images" / "broken_zero.jpg").write_bytes(b"")
    (data / "train" / "train_images" / "broken_cut.jpg").write_bytes(whole[: len(whole) // 2])
    with (data / "train" / "train_label.txt").open("a", encoding="utf-8") as labels:
        labels.write("broken_zero.jpg$white Audi.$This is a white Audi.\nbroken_cut.jpg$Truck.$This is a Truck.\n")
    assert main(["prepare", "--data", str(data), "--work", str(root / "work")]) == 0
    return root / "work"


def test_train_killed_mid_epoch_resumes_to_the_same_weights(work, tmp_path):
    import torch

    reference_run, run = tmp_path / "reference", tmp_path / "run"
    options = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(), text=True)
    reference = subprocess.Popen(command("train", "--work", work, "--out", reference_run, *TRAIN_FLAGS), **options)
    victim = subprocess.Popen(command("train", "--work", work, "--out", run, *TRAIN_FLAGS), **options)
    try:
        # train.log starts once the data is loaded; last.pt is written at the end of epoch 1
        started = wait_for(run / "train.log", victim)
        epoch_one = wait_for(run / "checkpoints" / "last.pt", victim) - started
        time.sleep(epoch_one / 2)  # about half-way through epoch 2
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
    finally:
        victim.kill()
    assert not (run / "checkpoints" / "final.pt").exists()
    interrupted_at = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert interrupted_at in (1, 2)

    resumed = subprocess.run(command("train", "--work", work, "--out", run, *TRAIN_FLAGS, "--resume"), capture_output=True, text=True,
                             env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at epoch {interrupted_at}" in (run / "train.log").read_text()

    expected = torch.load(reference_run / "checkpoints" / "final.pt", weights_only=True)["state_dict"]
    actual = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["state_dict"]
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == [], different

    # the broken training images were counted, logged and skipped; the other 64 pairs were used
    log = (reference_run / "train.log").read_text()
    assert "on 64 pairs (2 unreadable images skipped)" in log
    assert "broken_zero.jpg: cannot read image" in log and "broken_cut.jpg: cannot read image" in log


def test_damaged_last_checkpoint_is_a_one_line_error(work, tmp_path, cli):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    in_process_flags = [flag for flag in TRAIN_FLAGS if flag not in ("--threads", "1")]  # keep this process's torch threads
    cli.error(["train", "--work", work, "--out", run, *in_process_flags, "--resume"], f"{run / 'checkpoints' / 'last.pt'}: cannot resume from it")


KILL_AT_FSYNC = (
    "import os, signal, sys\n"
    "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die at the worst moment: output written, not yet renamed\n"
    "from traffic_retrieval.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_predict_killed_while_writing_leaves_the_old_submission(synth_data, random_checkpoint, tmp_path):
    submission = tmp_path / "submission.json"
    old = '{"results": []}\n'
    submission.write_text(old)
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FSYNC, "predict", "--data", str(synth_data), "--checkpoint", str(random_checkpoint),
                             "--out", str(submission), "--workers", "0", "--no-progress"], capture_output=True, text=True, env=environment(), timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert submission.read_text() == old
    # what the kill left behind is a hidden temporary file, never something at the submission's path
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"submission.json"}
    json.loads(submission.read_text())
