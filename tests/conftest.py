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

