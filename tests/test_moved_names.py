"""The modules' old names keep working after the moves into subpackages: the stable ones silently, the others
with a DeprecationWarning that names the new module and the release that removes the old name."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import properties
from properties import _moved

ROOT = Path(properties.__file__).resolve().parent.parent


def _fresh_import(name: str):
    """Import ``name`` as if for the first time in this process (the alias is asked again)."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_an_old_name_is_the_new_module_itself(monkeypatch):
    monkeypatch.setitem(_moved.MOVED, "properties.old_keys_probe", "properties.measure.keys")
    monkeypatch.delitem(sys.modules, "properties.old_keys_probe", raising=False)
    import properties.measure.keys

    try:
        with pytest.warns(DeprecationWarning, match="properties.old_keys_probe moved to properties.measure.keys"):
            assert importlib.import_module("properties.old_keys_probe") is properties.measure.keys
    finally:
        sys.modules.pop("properties.old_keys_probe", None)


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_every_moved_name_imports_as_its_new_module(old):
    new = _moved.MOVED[old]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = _fresh_import(old)
    assert module is importlib.import_module(new), old
    assert module.__spec__.name == module.__name__ == new  # the module keeps its own identity
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    if old in _moved.STABLE:
        assert deprecations == [], f"{old} is a stable name: no warning"
    else:
        assert deprecations == [f"{old} moved to {new}; the old name is removed in dtd-properties {_moved.REMOVED_IN}"]


def test_the_public_names_import_without_a_warning_as_a_user_would(tmp_path):
    code = ("import properties; from properties import Subject, Implementation; from properties.keys import RateKey; "
            "from properties.checks import root_outcomes; import properties.adapters; "
            "from properties.adapters import shipped_implementations; from properties.stats import Rate; "
            "from properties.strategies import cases; from properties.subject import check_model; "
            "assert Subject.__module__ == 'properties.subjects.subject'; "
            "assert RateKey.__module__ == 'properties.measure.keys'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_deprecated_name_warns_at_the_line_that_imports_it():
    sys.modules.pop("properties.thresholds", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import properties.thresholds  # noqa: F401
    (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert warning.filename == __file__ and "properties.measure.thresholds" in str(warning.message)


def test_the_deprecated_names_are_removed_in_a_later_release_than_this_one():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)

    def parse(text):
        return tuple(int(part) for part in text.split("."))

    assert parse(version) < parse(_moved.REMOVED_IN), (
        f"dtd-properties {version} reached REMOVED_IN = {_moved.REMOVED_IN}: delete the deprecated names of "
        "properties._moved.MOVED (every one not in STABLE) and this test's expectations")
    assert _moved.STABLE <= set(_moved.MOVED)


def test_names_that_did_not_move_are_left_to_the_ordinary_import():
    finder = next(f for f in sys.meta_path if isinstance(f, _moved._Finder))
    assert finder.find_spec("properties.measure.keys") is None and finder.find_spec("json") is None
    assert finder.find_spec("properties.test_generated") is None  # the suite's test modules' old names are gone
    assert sum(isinstance(f, _moved._Finder) for f in sys.meta_path) == 1  # installed once, however often imported


def test_python_m_with_the_old_name_runs_the_check_command_and_says_it_moved():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "properties.subject_cli", "check", "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MODULE:FACTORY" in result.stdout and "--confidence" in result.stdout
    assert f"properties.subject_cli moved to properties.cli.check; the old name is removed in dtd-properties " \
           f"{_moved.REMOVED_IN}" in result.stderr
