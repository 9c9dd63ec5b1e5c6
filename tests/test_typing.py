"""The package type-checks (it ships a py.typed marker, so its users' checkers read these hints)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_errors() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "singleton"], cwd=ROOT, capture_output=True, text=True,
                            timeout=170)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (ROOT / "singleton" / "py.typed").exists()
