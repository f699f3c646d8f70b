"""The modules' old names keep working after the report and the console script moved into subpackages."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import properties
from properties import _moved

ROOT = Path(properties.__file__).resolve().parent.parent


def test_an_old_name_is_the_new_module_itself(monkeypatch):
    monkeypatch.setitem(_moved.MOVED, "properties.old_keys_probe", "properties.keys")
    monkeypatch.delitem(sys.modules, "properties.old_keys_probe", raising=False)
    import properties.keys

    try:
        assert importlib.import_module("properties.old_keys_probe") is properties.keys
    finally:
        sys.modules.pop("properties.old_keys_probe", None)


def test_every_moved_name_imports_as_its_new_module():
    for old, new in _moved.MOVED.items():
        module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert module.__spec__.name == module.__name__ == new  # the module keeps its own identity
    from properties import figures, summary

    assert figures is importlib.import_module(_moved.MOVED["properties.figures"])
    assert summary.scale_word is importlib.import_module(_moved.MOVED["properties.summary"]).scale_word


def test_names_that_did_not_move_are_left_to_the_ordinary_import():
    finder = next(f for f in sys.meta_path if isinstance(f, _moved._Finder))
    assert finder.find_spec("properties.measure.keys") is None and finder.find_spec("json") is None
    assert sum(isinstance(f, _moved._Finder) for f in sys.meta_path) == 1  # installed once, however often imported


def test_python_m_with_the_old_name_runs_the_check_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "properties.subject_cli", "check", "--help"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MODULE:FACTORY" in result.stdout and "--confidence" in result.stdout
