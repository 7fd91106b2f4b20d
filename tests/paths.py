"""Where the project's own inputs live: the repository root and its ``examples/`` (the third-party
inputs are in :mod:`tests.shared_data`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
