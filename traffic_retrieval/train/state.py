"""What a run has learnt and where it is: the one object a resume must restore.

``TrainingState.state_dict()`` is what ``last.pt`` holds (weights, attribute heads,
optimizer, fp16 loss scaler, epoch, step, best score, history); ``load_state_dict``
puts it back, so an interrupted run continues exactly where it stopped (the data
order and augmentation of an epoch are seeded by the epoch number, see ``loop.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BEST_METRIC = "official_mAP@10"


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

    def model_weights(self) -> dict:
        """The model's weights on the CPU (the ``state_dict`` key open_clip reads)."""
        from ..model.factory import unwrap

        return {key: value.detach().cpu() for key, value in unwrap(self.model).state_dict().items()}

    def state_dict(self) -> dict:
        """Everything a resume needs. Like torch's own ``state_dict()``, tensors may share
        memory with the live ones (CPU training): save it before training goes on."""
        payload = {"state_dict": self.model_weights(), "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                   "epoch": self.epoch, "step": self.step, "best": dict(self.best), "history": list(self.history)}
        if self.heads is not None:
            payload["attribute_heads"] = self.heads.state_dict()
        return payload

    def load_state_dict(self, payload: dict) -> None:
        from ..model.factory import unwrap

        unwrap(self.model).load_state_dict(payload["state_dict"])
        if self.heads is not None and "attribute_heads" in payload:
            self.heads.load_state_dict(payload["attribute_heads"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])  # the fp16 loss scale, so a resumed run repeats an uninterrupted one
        self.epoch, self.step = int(payload["epoch"]), int(payload["step"])
        self.best = dict(payload.get("best") or no_best_yet())
        self.history = list(payload.get("history", []))

    def finish_epoch(self, record: dict) -> bool:
        """Add a finished epoch's record; True when its val score is the best so far."""
        self.epoch = record["epoch"]
        self.history.append(record)
        score = record.get("val", {}).get(BEST_METRIC)
        if score is None or score <= self.best[BEST_METRIC]:
            return False
        self.best = {BEST_METRIC: score, "epoch": record["epoch"]}
        return True
