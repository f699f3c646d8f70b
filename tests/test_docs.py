"""Every code block of the documentation runs, so that no example can rot: the pages under ``docs/`` and README.md.

Conventions of a page (one test per page; its blocks run in order, as a reader would paste them):

* a ``python`` block runs in one namespace per page, in a fresh temporary directory that is the current
  directory and on ``sys.path``; a block whose first line is ``# file: NAME`` is the content of a file the
  reader saves (written there, not run);
* a ``bash`` block runs each line that starts with ``dtd-properties `` in this process
  (:func:`properties.cli.main`) in that directory; the line must exit 0, or the code its comment names
  (``# ... exit 1 ...``);
* a block directly after the line ``<!-- illustrative -->`` is not run (installing, a run of many minutes, a
  cluster); any other ``bash`` block that holds a line that is no ``dtd-properties`` command fails this test;
* blocks of other languages (``text``, ``json``, ...) are output, not code.

The conformance kit's in-process runs (``dtd-properties conform``) collect from this checkout, whose
``pyproject.toml`` asks for pytest-xdist workers; ``PYTEST_ADDOPTS=-n 0`` keeps them in this process (the
report is the same rate for rate), so that the whole test stays well under two minutes.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w+-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
ILLUSTRATIVE = "<!-- illustrative -->"
FILE = re.compile(r"#\s*file:\s*(\S+)")
EXIT = re.compile(r"#.*\bexit(?: status| code)? (\d+)")
RUNNABLE = ("python", "bash")


def blocks(page: Path) -> list[tuple[str, str, bool, int]]:
    """``(language, code, illustrative, line)`` of every fenced block of ``page``."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n ").rsplit("\n", 1)[-1].strip()
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in match["code"].splitlines()) + "\n"
        found.append((match["language"], code, before == ILLUSTRATIVE, text.count("\n", 0, match.start()) + 1))
    return found


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runnable(page: Path) -> bool:
    return any(language in RUNNABLE and not illustrative for language, _, illustrative, _ in blocks(page))


def test_the_docs_have_pages_and_code():
    assert len(PAGES) > 20
    assert sum(_runnable(page) for page in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_bash_block_runs_or_is_marked_illustrative(page):
    for language, code, illustrative, line in blocks(page):
        if language != "bash" or illustrative:
            continue
        commands = [c for c in code.splitlines() if c.strip() and not c.lstrip().startswith("#")]
        others = [c for c in commands if not c.startswith("dtd-properties ")]
        assert not others, (f"{_name(page)}:{line}: a bash block with {others[0]!r} runs nothing here: "
                            f"mark it {ILLUSTRATIVE}")
        assert commands, f"{_name(page)}:{line}: an empty bash block"


def _dtd_properties(command: str, where: str) -> None:
    from properties.cli import main

    words = shlex.split(command, comments=True)
    expected = EXIT.search(command)
    try:
        code = main(words[1:])
    except SystemExit as stop:  # --version, argparse's usage errors
        code = stop.code or 0
    want = int(expected.group(1)) if expected else 0
    assert code == want, f"{where}: {command!r} exited {code}, the page says {want}"


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=_name)
def test_every_code_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)  # the CLI adds the current directory too: undone
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 0")
    saved = []
    namespace: dict = {"__name__": "docs_example"}
    try:
        for language, code, illustrative, line in blocks(page):
            where = f"{_name(page)}:{line}"
            if illustrative or language not in RUNNABLE:
                continue
            if language == "bash":
                for command in code.splitlines():
                    if command.startswith("dtd-properties "):
                        _dtd_properties(command, where)
                continue
            first = code.splitlines()[0] if code.strip() else ""
            found = FILE.match(first)
            if found:
                (tmp_path / found.group(1)).write_text(code)
                saved.append(Path(found.group(1)).stem)
                sys.modules.pop(saved[-1], None)  # a module of another page's example may have this name
                continue
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as error:  # name the block: the traceback alone points into exec
                raise AssertionError(f"{where}: the python block fails: {type(error).__name__}: {error}") from error
    finally:
        for name in saved:
            sys.modules.pop(name, None)
