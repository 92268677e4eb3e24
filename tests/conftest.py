import logging
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CHALLENGE_TEXT = SHARED / "data" / "challenge_text"

logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "initialized randomly" as a warning


@pytest.fixture(scope="session")
def challenge_text() -> Path:
    """The real challenge texts in ../shared; tests using them skip in a user's clone."""
    if not CHALLENGE_TEXT.is_dir():
        pytest.skip("../shared/data/challenge_text is not present (only in the project's workspace)")
    return CHALLENGE_TEXT



@pytest.fixture(scope="module")
def retriever(index):
    """A Retriever over the module's own ``index`` fixture, in fp32: bf16 autocast (the CPU default
    where supported) lets a query's scores move by ~1e-4 with the other queries of its encoding
    batch, more than the gaps between a random test model's scores."""
    from traffic_retrieval.index import Retriever

    with Retriever.open(index, device="cpu", precision="fp32") as opened:
        yield opened


@pytest.fixture(scope="module")
def tiny_resnet():
    """A randomly initialised TR-Tiny-RN (seed 0), one per test module."""
    import torch

    from traffic_retrieval.model.factory import create_model

    torch.manual_seed(0)
    return create_model("TR-Tiny-RN")
