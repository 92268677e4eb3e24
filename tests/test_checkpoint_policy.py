"""The checkpoint policy: ``save_every``, ``keep_epochs``, ``best.pt`` as a hard link,
``save_optimizer="none"`` and its resume, and ``checkpoint_disk_estimate`` against the
real files. The tiny TR-Tiny-RN of ``test_trainer_parts.py`` (12 M numbers: 48 MB a
model checkpoint); CPU, fp32."""

import os
from pathlib import Path

import pytest
import torch

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import create_model, load_checkpoint
from traffic_retrieval.train.checkpoints import (OPTIMIZER_RESTART_MESSAGE, Checkpointer, checkpoint_disk_estimate,
                                                 parameter_counts)
from traffic_retrieval.train.setup import make_optimizer, make_scaler, parameter_groups
from traffic_retrieval.train.state import TrainingState

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return create_model("TR-Tiny-RN")


def fresh_state(loaded, seed=None, stepped=True) -> TrainingState:
    """A TrainingState over a copy of the tiny model (new random weights for ``seed``); with
    ``stepped`` one AdamW step taken, so the optimizer holds its moments as in a real run."""
    import copy

    if seed is None:
        model = copy.deepcopy(loaded.model)
    else:
        torch.manual_seed(seed)
        model = create_model("TR-Tiny-RN").model
    state = TrainingState(model, make_optimizer(parameter_groups(model, 0.1), 1e-3), make_scaler("cpu", None))
    if stepped:
        for parameter in model.parameters():
            parameter.grad = torch.full_like(parameter, 1e-3)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
    return state


def run_epochs(checkpointer, state, scores: dict[int, float], final_epoch=None) -> dict[int, list[str]]:
    """Finish the epochs of ``scores`` (val score of each) and save each; the file names written by epoch."""
    written = {}
    for epoch, score in scores.items():
        is_best = state.finish_epoch({"epoch": epoch, "loss": 1.0, "val": {"official_mAP@10": score}})
        written[epoch] = [p.name for p in checkpointer.save_epoch(state, is_best, final_epoch=final_epoch)]
    return written


def listing(checkpointer) -> list[str]:
    return sorted(p.name for p in checkpointer.directory.iterdir())


def test_save_every_with_keep_epochs_leaves_exactly_the_expected_files(loaded, tmp_path):
    state = fresh_state(loaded)
    checkpointer = Checkpointer(tmp_path, loaded, {"train_config": {"epochs": 8}}, keep=2, keep_epochs=(5,), save_every=3,
                                save_optimizer="none")
    scores = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25, 5: 0.4, 6: 0.35, 7: 0.5, 8: 0.45}  # best after 1, 2, 5 and 7
    written = run_epochs(checkpointer, state, scores, final_epoch=8)
    # epoch_N.pt after 3 and 6 (every 3rd), 5 (keep_epochs) and 8 (the last); best.pt of its own after 1, 2 and 7
    assert written == {1: ["best.pt", "last.pt"], 2: ["best.pt", "last.pt"], 3: ["epoch_3.pt", "last.pt"], 4: ["last.pt"],
                       5: ["epoch_5.pt", "best.pt", "last.pt"], 6: ["epoch_6.pt", "last.pt"], 7: ["best.pt", "last.pt"],
                       8: ["epoch_8.pt", "last.pt"]}
    # the 2 newest of 3, 6, 8 kept, and 5 always
    assert listing(checkpointer) == ["best.pt", "epoch_5.pt", "epoch_6.pt", "epoch_8.pt", "last.pt"]
    assert torch.load(checkpointer.best_path, weights_only=True)["epoch"] == 7
    assert os.stat(checkpointer.best_path).st_nlink == 1  # epoch_7.pt was never written
    estimate = checkpoint_disk_estimate(*parameter_counts(state.model), epochs=8, save_every=3, keep=2, keep_epochs=[5],
                                        save_optimizer="none", best_epochs_estimate=[1, 2, 5, 7])
    assert sorted(estimate["files_at_end"]) == ["best.pt", "epoch_5.pt", "epoch_6.pt", "epoch_8.pt", "final.pt", "last.pt"]
    assert estimate["epochs_with_epoch_file"] == [3, 5, 6, 8]


def test_the_old_call_writes_every_epoch_and_takes_the_last_epoch_from_the_config(loaded, tmp_path):
    state = fresh_state(loaded, stepped=False)
    checkpointer = Checkpointer(tmp_path, loaded, {"train_config": {"epochs": 5}}, 2, save_every=2)
    written = run_epochs(checkpointer, state, {1: 0.1, 2: 0.05, 3: 0.01, 4: 0.0, 5: 0.0})  # no final_epoch given
    assert [name for names in written.values() for name in names if name.startswith("epoch_")] == ["epoch_2.pt", "epoch_4.pt", "epoch_5.pt"]
    plain = Checkpointer(tmp_path / "plain", loaded, {})
    assert run_epochs(plain, fresh_state(loaded, stepped=False), {1: 0.1})[1] == ["epoch_1.pt", "best.pt", "last.pt"]


def test_keep_epochs_survive_keep_1(loaded, tmp_path):
    state = fresh_state(loaded, stepped=False)
    kept = Checkpointer(tmp_path / "kept", loaded, {}, keep=1, keep_epochs=[2], save_optimizer="none")
    run_epochs(kept, state, {1: 0.1, 2: 0.2, 3: 0.1, 4: 0.1}, final_epoch=4)
    assert listing(kept) == ["best.pt", "epoch_2.pt", "epoch_4.pt", "last.pt"]
    assert os.stat(kept.best_path).st_ino == os.stat(kept.epoch_path(2)).st_ino
    plain = Checkpointer(tmp_path / "plain", loaded, {}, keep=1, save_optimizer="none")
    run_epochs(plain, fresh_state(loaded, stepped=False), {1: 0.1, 2: 0.2, 3: 0.1, 4: 0.1}, final_epoch=4)
    assert listing(plain) == ["best.pt", "epoch_4.pt", "last.pt"]
    # best.pt (a link to epoch_2.pt) outlived that file's deletion and still loads
    assert torch.load(plain.best_path, weights_only=True)["epoch"] == 2 and os.stat(plain.best_path).st_nlink == 1


def test_best_is_a_hard_link_to_the_epoch_file_and_loads_as_a_checkpoint(loaded, tmp_path):
    state = fresh_state(loaded, stepped=False)
    checkpointer = Checkpointer(tmp_path, loaded, {"train_config": {"epochs": 2}}, save_optimizer="none")
    run_epochs(checkpointer, state, {1: 0.3}, final_epoch=2)
    best, epoch_file = os.stat(checkpointer.best_path), os.stat(checkpointer.epoch_path(1))
    assert (best.st_ino, best.st_dev) == (epoch_file.st_ino, epoch_file.st_dev) and best.st_nlink == 2
    assert listing(checkpointer) == ["best.pt", "epoch_1.pt", "last.pt"]  # no temporary file left behind
    reloaded = load_checkpoint(checkpointer.best_path)
    for key, value in state.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], value), key
    run_epochs(checkpointer, state, {2: 0.4}, final_epoch=2)  # a new best moves the link, atomically
    assert os.stat(checkpointer.best_path).st_ino == os.stat(checkpointer.epoch_path(2)).st_ino
    assert os.stat(checkpointer.epoch_path(1)).st_nlink == 1
    assert listing(checkpointer) == ["best.pt", "epoch_1.pt", "epoch_2.pt", "last.pt"]


def test_best_is_a_copy_where_links_are_not_supported(loaded, tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    checkpointer = Checkpointer(tmp_path, loaded, {}, save_optimizer="none")
    run_epochs(checkpointer, fresh_state(loaded, stepped=False), {1: 0.3}, final_epoch=1)
    assert os.stat(checkpointer.best_path).st_nlink == 1 and os.stat(checkpointer.epoch_path(1)).st_nlink == 1
    best, epoch_file = (torch.load(path, weights_only=True) for path in (checkpointer.best_path, checkpointer.epoch_path(1)))
    assert best["epoch"] == epoch_file["epoch"] == 1 and best.keys() == epoch_file.keys()
    assert all(torch.equal(value, epoch_file["state_dict"][key]) for key, value in best["state_dict"].items())
    assert listing(checkpointer) == ["best.pt", "epoch_1.pt", "last.pt"]


def tensor_numbers(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(tensor_numbers(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_numbers(v) for v in value)
    return 0


def test_save_optimizer_none_leaves_the_optimizer_out_and_resume_restarts_it(loaded, tmp_path):
    state = fresh_state(loaded)
    assert state.optimizer.state  # AdamW has moments to leave out
    checkpointer = Checkpointer(tmp_path, loaded, {}, save_optimizer="none")
    run_epochs(checkpointer, state, {1: 0.2}, final_epoch=3)
    payload = torch.load(checkpointer.last_path, weights_only=True)
    assert "optimizer" not in payload and payload["optimizer_saved"] is False
    assert tensor_numbers(payload) == tensor_numbers(payload["state_dict"])  # no optimizer tensor anywhere
    assert checkpointer.last_path.stat().st_size < 1.02 * checkpointer.epoch_path(1).stat().st_size

    resumed = fresh_state(loaded, seed=7)  # other weights and its own moments: all must come from the file or restart
    assert checkpointer.resume(resumed) is True and checkpointer.optimizer_restarted
    assert "restarting AdamW moments" in OPTIMIZER_RESTART_MESSAGE and "save_optimizer: none" in OPTIMIZER_RESTART_MESSAGE
    assert not resumed.optimizer.state  # fresh: no moments, AdamW's step counts start again
    assert (resumed.epoch, resumed.step, resumed.best, resumed.history) == (state.epoch, state.step, state.best, state.history)
    for key, value in state.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for parameter in resumed.model.parameters():  # and it trains on from there
        parameter.grad = torch.full_like(parameter, 1e-3)
    resumed.optimizer.step()

    exact = Checkpointer(tmp_path / "exact", loaded, {})  # save_optimizer="last": the moments come back
    run_epochs(exact, state, {2: 0.3}, final_epoch=3)
    again = fresh_state(loaded, seed=8)
    assert exact.resume(again) and not exact.optimizer_restarted
    moments = {id(p): s["exp_avg"] for p, s in state.optimizer.state.items()}
    assert len(again.optimizer.state) == len(moments) > 0
    for mine, theirs in zip(state.optimizer.param_groups[0]["params"], again.optimizer.param_groups[0]["params"]):
        torch.testing.assert_close(again.optimizer.state[theirs]["exp_avg"], moments[id(mine)])


def one_line(message: str) -> bool:
    return "\n" not in message and len(message) < 400


def test_a_payload_without_optimizer_state_needs_the_explicit_marker(loaded, tmp_path):
    state = fresh_state(loaded)
    state.finish_epoch({"epoch": 1, "loss": 1.0})
    checkpointer = Checkpointer(tmp_path, loaded, {})
    checkpointer.directory.mkdir(parents=True)
    saved = state.state_dict()
    without = {k: v for k, v in saved.items() if k != "optimizer"}
    target = fresh_state(loaded, seed=3, stepped=False)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    for broken, reason in ((without, "optimizer is missing"),
                           ({**without, "optimizer_saved": "no"}, "optimizer_saved must be true or false"),
                           ({**saved, "optimizer_saved": False}, "optimizer_saved is false but an optimizer state is present"),
                           ({**without, "optimizer_saved": True}, "optimizer is missing")):
        atomic_torch_save(broken, checkpointer.last_path)
        with pytest.raises(TrafficRetrievalError) as refused:
            checkpointer.resume(target)
        message = str(refused.value)
        assert one_line(message) and "last.pt: cannot resume from it" in message and reason in message, message
        assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())
        assert (target.epoch, target.history) == (0, [])
    atomic_torch_save({**without, "optimizer_saved": False}, checkpointer.last_path)
    assert checkpointer.resume(target) and checkpointer.optimizer_restarted and target.epoch == 1


@pytest.mark.parametrize("arguments, reason", [({"save_every": 0}, "save_every"), ({"save_optimizer": "all"}, "save_optimizer"),
                                               ({"keep_epochs": [0]}, "keep_epochs"), ({"keep_epochs": ["5"]}, "keep_epochs")])
def test_bad_policy_settings_are_one_line_errors(loaded, tmp_path, arguments, reason):
    with pytest.raises(TrafficRetrievalError, match=reason) as refused:
        Checkpointer(tmp_path, loaded, {}, **arguments)
    assert one_line(str(refused.value))


@pytest.mark.parametrize("save_optimizer", ["last", "none"])
def test_the_estimate_matches_the_real_file_sizes(loaded, tmp_path, save_optimizer):
    state = fresh_state(loaded)
    metadata = {"train_config": {"epochs": 1, "model": "TR-Tiny-RN"}, "category_texts": {"vehicle": ["A red car."] * 50}}
    checkpointer = Checkpointer(tmp_path, loaded, metadata, save_optimizer=save_optimizer)
    run_epochs(checkpointer, state, {1: 0.5}, final_epoch=1)
    final = checkpointer.save_final(state)
    estimate = checkpoint_disk_estimate(*parameter_counts(state.model), epochs=1, save_every=1, keep=2, keep_epochs=(),
                                        save_optimizer=save_optimizer)
    slack = 256 * 1024  # metadata and torch.save's framing: a few hundred bytes per tensor
    for path, expected in ((checkpointer.epoch_path(1), estimate["model_checkpoint_bytes"]), (final, estimate["model_checkpoint_bytes"]),
                           (checkpointer.last_path, estimate["last_bytes"])):
        assert abs(path.stat().st_size - expected) <= 0.05 * expected + slack, (path.name, path.stat().st_size, expected)
    held = sum(p.stat().st_size for p in {os.stat(p).st_ino: p for p in checkpointer.directory.iterdir()}.values())
    assert abs(held - estimate["disk_held_at_end_bytes"]) <= 0.05 * estimate["disk_held_at_end_bytes"] + 4 * slack
    assert estimate["bytes_written_per_epoch"] == [estimate["model_checkpoint_bytes"] + estimate["last_bytes"]]  # best.pt linked


def test_the_estimate_for_the_seeds_policy():
    """ViT-bigG-14's 2,539,567,105 numbers, 5 epochs each a new best, epoch_5.pt kept."""
    counts = 2_539_567_105
    last = checkpoint_disk_estimate(counts, counts, epochs=5, save_every=1, keep=2, keep_epochs=[5], save_optimizer="last")
    none = checkpoint_disk_estimate(counts, counts, epochs=5, save_every=1, keep=2, keep_epochs=[5], save_optimizer="none")
    model = 4 * counts
    assert last["model_checkpoint_bytes"] == model and last["last_bytes"] == 3 * model and none["last_bytes"] == model
    assert last["bytes_written_per_epoch"] == [4 * model] * 5  # epoch_N.pt + last.pt; best.pt a link
    assert last["bytes_written_per_run"] == 21 * model and none["bytes_written_per_run"] == 11 * model  # + final.pt
    # keep 2 counts the epochs besides keep_epochs: 3 and 4, and 5 kept for good
    assert last["files_at_end"] == ["epoch_3.pt", "epoch_4.pt", "epoch_5.pt", "best.pt = epoch_5.pt", "last.pt", "final.pt"]
    assert last["disk_held_at_end_bytes"] == 7 * model and none["disk_held_at_end_bytes"] == 5 * model
    assert last["peak_disk_bytes"] == 9 * model  # epoch_3, 4, 5, old last.pt and the new one being written
    assert last["bytes_saved_by_best_links"] == 5 * model
    sparse = checkpoint_disk_estimate(counts, counts, epochs=30, save_every=10, keep=1, keep_epochs=[5], save_optimizer="none",
                                      best_epochs_estimate=3)
    assert sparse["epochs_with_epoch_file"] == [5, 10, 20, 30]
    assert sparse["files_at_end"] == ["epoch_5.pt", "epoch_30.pt", "best.pt", "last.pt", "final.pt"]  # best: epoch 3, its own file
    assert "GB" in sparse["summary"]
