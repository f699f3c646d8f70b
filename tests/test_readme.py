"""Every Python block of README.md runs as written, in order, in one namespace (as a reader would paste them).

A block whose first line is ``# file: NAME`` is the content of a file the reader saves: it is written to a
temporary directory (on ``sys.path``) instead of being executed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCK.findall(README.read_text())) >= 2


def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "readme"}
    for number, code in enumerate(BLOCK.findall(README.read_text()), 1):
        first = code.splitlines()[0] if code.strip() else ""
        found = re.match(r"#\s*file:\s*(\S+)", first)
        if found:
            (tmp_path / found.group(1)).write_text(code)
            continue
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # name the block: the traceback alone points into exec
            raise AssertionError(f"README.md python block {number} fails: {type(error).__name__}: {error}") from error
    sys.modules.pop("readme", None)
