"""The README's example is real code: extract it and run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:8]
    commands = [line.split("#")[0].strip() for line in head if line.startswith("make ")]
    assert commands == ["make demo", "make test"]


def test_readme_example_runs(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    # The example prints the connection count after its connection closed, and kad's grant.
    assert result.stdout.strip() == "0 Grant(min=15, max=60)"
