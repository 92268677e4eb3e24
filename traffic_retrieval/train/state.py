"""What a run has learnt and where it is: the one object a resume must restore.

``TrainingState.state_dict()`` is what ``last.pt`` holds (weights, attribute heads,
optimizer, fp16 loss scaler, epoch, step, best score, history); ``load_state_dict``
puts it back, so an interrupted run continues exactly where it stopped (the data
order and augmentation of an epoch are seeded by the epoch number, see ``loop.py``).
``state_dict(optimizer=False)`` leaves the optimizer out and says so
(``"optimizer_saved": False``): such a payload resumes with a fresh optimizer.

The best epoch is chosen by the camera-domain val split (``val_camera``, the test's
surveillance look) where an epoch record has it, else by the val split
(``selection_split``); ``best_split`` says which. A resume whose records are scored on
another split than the best so far (a camera val split added or removed) starts the
best afresh: scores of two splits are not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import TrafficRetrievalError

BEST_METRIC = "official_mAP@10"
# The val splits that may choose the best epoch, by preference: the first one an epoch record scored.
SELECTION_SPLITS: tuple[str, ...] = ("val_camera", "val")


def selection_split(record: dict) -> str | None:
    """The split whose ``BEST_METRIC`` decides whether an epoch record is the best: the
    camera-domain val split where the record has it, else val; None when it has neither."""
    for split in SELECTION_SPLITS:
        scores = record.get(split)
        if isinstance(scores, dict) and scores.get(BEST_METRIC) is not None:
            return split
    return None


def no_best_yet() -> dict:
    return {BEST_METRIC: -1.0, "epoch": None}


@dataclass
class TrainingState:
    model: Any  # the open_clip model (not the DDP wrapper)
    optimizer: Any
    scaler: Any  # torch.amp.GradScaler (disabled unless fp16 on CUDA)
    heads: Any = None  # attribute heads (nn.ModuleDict) or None
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best: dict = field(default_factory=no_best_yet)  # best val score so far and its epoch
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    best_split: str | None = None  # the split ``best`` was scored on (``selection_split``), None before one

    def model_weights(self) -> dict:
        """The model's weights on the CPU (the ``state_dict`` key open_clip reads)."""
        from ..model.factory import unwrap

        return {key: value.detach().cpu() for key, value in unwrap(self.model).state_dict().items()}

    def state_dict(self, optimizer: bool = True) -> dict:
        """Everything a resume needs. Like torch's own ``state_dict()``, tensors may share
        memory with the live ones (CPU training): save it before training goes on.

        ``optimizer=False``: no optimizer state (AdamW's moments: twice the weights' size),
        marked ``"optimizer_saved": False`` so that a resume knows to start the optimizer
        afresh; the loss scaler's few numbers stay."""
        payload = {"state_dict": self.model_weights()}
        if optimizer:
            payload["optimizer"] = self.optimizer.state_dict()
        else:
            payload["optimizer_saved"] = False
        payload.update({"scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step, "best": dict(self.best),
                        "best_split": self.best_split, "history": list(self.history)})
        if self.heads is not None:
            payload["attribute_heads"] = self.heads.state_dict()
        return payload

    def load_state_dict(self, payload: dict) -> bool:
        """Put back what ``state_dict`` returned; checked whole first, so a bad payload
        (a one-line ``TrafficRetrievalError``) changes nothing. Returns whether the optimizer
        state was restored: False for a payload that says ``"optimizer_saved": False``
        (the optimizer then starts fresh: no moments, its own step counts at 0)."""
        from ..model.factory import unwrap

        check_resume_payload(payload, unwrap(self.model), self.heads)
        unwrap(self.model).load_state_dict(payload["state_dict"])
        if self.heads is not None and "attribute_heads" in payload:
            self.heads.load_state_dict(payload["attribute_heads"])
        restored = payload.get("optimizer_saved", True)
        if restored:
            self.optimizer.load_state_dict(payload["optimizer"])
        else:
            self.optimizer.state.clear()
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])  # the fp16 loss scale, so a resumed run repeats an uninterrupted one
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.best = dict(payload.get("best") or no_best_yet())
        # a state saved before the camera val split existed had its best chosen on val
        self.best_split = payload.get("best_split", "val" if self.best.get("epoch") is not None else None)
        self.history = list(payload.get("history", []))
        return restored

    def finish_epoch(self, record: dict) -> bool:
        """Add a finished epoch's record; True when its score on ``selection_split(record)``
        (camera val where it has one, else val) is the best so far. A best so far of another
        split does not count: the first record of a new split is the best."""
        self.epoch = record["epoch"]
        self.history.append(record)
        split = selection_split(record)
        if split is None:
            return False
        score = record[split][BEST_METRIC]
        if split == self.best_split and score <= self.best[BEST_METRIC]:
            return False
        self.best = {BEST_METRIC: score, "epoch": record["epoch"]}
        self.best_split = split
        return True


def check_resume_payload(payload, model, heads=None) -> None:
    """``payload`` has the keys and types ``TrainingState.state_dict`` writes, and weights of
    the shapes ``model`` (and ``heads``) have; else a one-line error naming the key."""
    import torch

    if not isinstance(payload, dict):
        raise TrafficRetrievalError(f"not a training state (a {type(payload).__name__})")
    optimizer_saved = payload.get("optimizer_saved", True)
    if not isinstance(optimizer_saved, bool):
        raise TrafficRetrievalError("optimizer_saved must be true or false")
    if not optimizer_saved and payload.get("optimizer") is not None:
        raise TrafficRetrievalError("optimizer_saved is false but an optimizer state is present")
    required = (("state_dict", dict), ("optimizer", dict), ("epoch", int), ("step", int))
    for key, expected in required if optimizer_saved else [r for r in required if r[0] != "optimizer"]:
        if key not in payload:
            hint = " (a training state saved without it says optimizer_saved: false)" if key == "optimizer" else ""
            raise TrafficRetrievalError(f"{key} is missing{hint}")
        if not isinstance(payload[key], expected) or isinstance(payload[key], bool) or (expected is int and payload[key] < 0):
            raise TrafficRetrievalError(f"{key} must be a {'non-negative integer' if expected is int else expected.__name__}")
    for key, expected in (("scaler", dict), ("best", dict), ("history", list), ("attribute_heads", dict)):
        if payload.get(key) is not None and not isinstance(payload[key], expected):
            raise TrafficRetrievalError(f"{key} must be a {expected.__name__}")
    if payload.get("best_split") is not None and payload["best_split"] not in SELECTION_SPLITS:
        raise TrafficRetrievalError(f"best_split must be one of {', '.join(SELECTION_SPLITS)} or null")
    best = payload.get("best") or no_best_yet()
    score = best.get(BEST_METRIC)
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)):
        raise TrafficRetrievalError(f"best.{BEST_METRIC} must be a number")
    if not all(isinstance(record, dict) for record in payload.get("history") or []):
        raise TrafficRetrievalError("history must be a list of epoch records")
    weights = [("state_dict", payload["state_dict"], model)]
    if heads is not None and payload.get("attribute_heads") is not None:
        weights.append(("attribute_heads", payload["attribute_heads"], heads))
    for key, stored, module in weights:
        expected = module.state_dict()
        if set(stored) != set(expected):
            missing, extra = sorted(set(expected) - set(stored), key=str), sorted(set(stored) - set(expected), key=str)
            raise TrafficRetrievalError(f"{key} {'lacks ' + repr(missing[0]) if missing else 'has unexpected ' + repr(extra[0])[:80]}")
        for name, value in expected.items():
            if not isinstance(stored[name], torch.Tensor) or stored[name].shape != value.shape:
                raise TrafficRetrievalError(f"{key}: {name!r} does not have shape {list(value.shape)}")
