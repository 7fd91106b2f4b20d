"""Key files are created atomically: processes racing to create one all get the same whole key."""

import base64
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from opsgate.security.keyfile import random_key_file


def test_racing_processes_get_one_whole_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master-key"
    with ProcessPoolExecutor(8) as pool:
        keys = list(pool.map(random_key_file, [path] * 64))
    assert len(set(keys)) == 1
    assert len(base64.urlsafe_b64decode(keys[0])) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["master-key"]  # no temporary files left
