"""Where the real third-party inputs live: a copy of the project's shared/data (with each folder's
SOURCES.md) under tests/data/shared, or the folder named by ``OPSGATE_SHARED_DATA`` (e.g. a
held-back set of the same kinds, for independent checks)."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("OPSGATE_SHARED_DATA") or Path(__file__).parent / "data" / "shared")
if not (SHARED_DATA / "emails").is_dir():
    raise RuntimeError(f"the real inputs are missing: {SHARED_DATA} has no emails/ folder")
