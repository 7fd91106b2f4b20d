"""Key files are created atomically: processes racing to create one all get the same whole key,
and an existing key is never overwritten."""

import base64
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from opsgate.keyfile import publish_new, random_key_file


def test_racing_processes_get_one_whole_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master-key"
    with ProcessPoolExecutor(8) as pool:
        keys = list(pool.map(random_key_file, [path] * 64))
    assert len(set(keys)) == 1
    assert len(base64.urlsafe_b64decode(keys[0])) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["master-key"]  # no temporary files left


def test_publish_new_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    publish_new(path, "first\n")
    with pytest.raises(FileExistsError):
        publish_new(path, "second\n")
    assert path.read_text() == "first\n" and sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]
