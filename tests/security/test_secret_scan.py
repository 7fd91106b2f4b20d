"""CI secret scan: detect-secrets (default plugins and filters) over every git-tracked file; any
finding not in the committed, audited ``.secrets.baseline`` fails.

The baseline holds only audited false positives (``"is_secret": false``): hashes in test vectors,
the published Go signed-note test key, redaction vectors and generated test keys whose variable
names look like secrets. Refresh it after an audit with
``detect-secrets scan $(git ls-files | grep -vx .secrets.baseline) > .secrets.baseline`` and mark
each entry ``"is_secret": false`` only after reading the line it points at.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from detect_secrets import SecretsCollection
from detect_secrets.core import baseline
from detect_secrets.settings import default_settings

REPO = Path(__file__).resolve().parents[2]
BASELINE = ".secrets.baseline"


def tracked_files() -> list[str]:
    """Paths (relative to the repository) git tracks, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in listed.decode().split("\0") if p and p != BASELINE and (REPO / p).is_file()]


def test_no_secret_outside_the_audited_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # findings carry the path as scanned; the baseline's are relative
    files = tracked_files()
    assert len(files) > 100 and "src/opsgate/security/secrets.py" in files
    found = SecretsCollection()
    with default_settings():
        for path in files:
            found.scan_file(path)
    known = baseline.load(baseline.load_from_file(BASELINE), BASELINE)
    new = [f"{name}:{secret.line_number} {secret.type}" for name, secret in found - known]
    assert new == [], "secrets found outside .secrets.baseline (remove them, or audit and add):\n" + "\n".join(new)


def test_the_baseline_holds_only_audited_false_positives() -> None:
    results = json.loads((REPO / BASELINE).read_text())["results"]
    entries = [(name, item) for name, items in results.items() for item in items]
    assert all(item.get("is_secret") is False for _, item in entries)
    assert all(not name.startswith("src/opsgate/security/") for name, _ in entries)


def test_the_scan_finds_a_planted_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("settings.py").write_text('GITHUB_TOKEN = "ghp_' + "Zq8" * 12 + '"\n')
    found = SecretsCollection()
    with default_settings():
        found.scan_file("settings.py")
    assert {secret.type for _, secret in found} >= {"GitHub Token"}
