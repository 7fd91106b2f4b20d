"""The package graph: imports run downward (the import-linter contract in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_security_imports_nothing_from_monitoring() -> None:
    graph = grimp.build_graph("opsgate")
    security = graph.find_descendants("opsgate.security")
    assert "opsgate.security.counts" in security
    upward = {(m, i) for m in security for i in graph.find_modules_directly_imported_by(m)
              if i.startswith("opsgate.monitoring")}
    assert upward == set()
