"""`make docs` builds without warnings (every page, every autodoc reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="building the docs needs the `docs` extra")
pytest.importorskip("myst_parser", reason="building the docs needs the `docs` extra")

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.timeout(240)
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "api.html").stat().st_size > 10_000
