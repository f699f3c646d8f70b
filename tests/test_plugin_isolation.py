"""Installing dtd-properties changes nothing for unrelated pytest projects.

These tests run ``python -m pytest`` in temporary projects, in a subprocess of
the interpreter running this suite, with the installed package only (no
``PYTHONPATH`` pointing at this repository): the pytest11 entry point must be
installed (``pip install -e .``, as CI and the README do).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENTRY_POINT = "dtd_properties_pytest"

#: an unrelated project with its own top-level ``properties`` package (or module, see below);
#: its conftest writes, at the end of each session (controller and xdist workers), what it saw
UNRELATED = {
    "properties/__init__.py": "def answer():\n    return 42\n",
    "test_mine.py": "import properties\n\n\ndef test_own_properties():\n    assert properties.answer() == 42\n",
    "conftest.py": '''
import json
import os
import sys


def pytest_sessionfinish(session):
    torch_loaded = "torch" in sys.modules
    suite_loaded = sorted(name for name in sys.modules if name == "dtd" or name.startswith(("dtd.", "properties.")))
    import torch  # only now, to read the thread count nobody should have changed

    seen = {"torch_loaded": torch_loaded, "suite_loaded": suite_loaded, "threads": torch.get_num_threads(),
            "properties": os.path.relpath(sys.modules["properties"].__file__) if "properties" in sys.modules else None}
    name = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    with open(os.path.join(os.path.dirname(__file__), f"seen-{name}.json"), "w") as stream:
        json.dump(seen, stream)
''',
}

#: a project that uses the suite through the entry point alone (no conftest)
USER_SUITE = {
    "test_rates.py": '''
import pytest
from properties.stats import Rate

pytestmark = pytest.mark.properties


@pytest.mark.parametrize("k", range(2))
def test_rate(property_report, property_report_seed, k):
    property_report.rate(f"user.rate{k}", Rate(5 + k, 10, property_report.confidence), "user: demo", summary=True)
''',
}


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


def _pytest(directory: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pytest`` in ``directory``, seeing only the installed packages."""
    ignored = ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    # nor what an xdist worker running this test sets for itself (PYTEST_XDIST_WORKER would name the inner controller)
    env = {key: value for key, value in os.environ.items()
           if key not in ignored and not key.startswith("PYTEST_XDIST") and key != "PYTEST_CURRENT_TEST"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _default_threads() -> int:
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="module")
def installed():
    """The pytest11 entry point of this package, which the tests below rely on."""
    points = {point.name: point.value for point in importlib.metadata.entry_points(group="pytest11")}
    assert points.get(ENTRY_POINT) == ENTRY_POINT, (
        f"dtd-properties' pytest11 entry point {ENTRY_POINT!r} is not installed in {sys.prefix} "
        f"(found {points}); install the package: pip install -e ."
    )
    assert not [value for value in points.values() if value.split(".")[0] in ("properties", "dtd")], points
    return points


def test_entry_module_imports_neither_torch_nor_the_suite():
    code = ("import sys, dtd_properties_pytest; "
            "print(sorted(m for m in sys.modules if m in ('torch', 'numpy', 'hypothesis', 'dtd', 'properties')))")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("layout, xdist", [("module", False), ("package", True)],
                         ids=["module-serial", "package-xdist"])
def test_unrelated_project_with_its_own_properties_is_unaffected(tmp_path, installed, layout, xdist):
    files = dict(UNRELATED)
    if layout == "module":
        files["properties.py"] = files.pop("properties/__init__.py")
    _write(tmp_path, files)
    result = _pytest(tmp_path, *(["-n", "2"] if xdist else []))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = _default_threads()
    seen = {path.name: json.loads(path.read_text()) for path in tmp_path.glob("seen-*.json")}
    assert set(seen) == ({"seen-controller.json", "seen-gw0.json", "seen-gw1.json"} if xdist
                         else {"seen-controller.json"})
    for name, what in seen.items():
        assert what["torch_loaded"] is False, name
        assert what["suite_loaded"] == [], name
        assert what["threads"] == expected, name
    # the sessions that ran the test (the controller, or the workers under xdist) imported the project's own
    own = {what["properties"] for what in seen.values()} - {None}
    assert own == {"properties.py" if layout == "module" else os.path.join("properties", "__init__.py")}
    assert not (tmp_path / "property-report").exists()


def test_options_are_listed_in_an_unrelated_projects_help(tmp_path, installed):
    _write(tmp_path, UNRELATED)
    result = _pytest(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--property-report", "--property-update-baseline", "--property-update-baseline-partial",
                   "--property-baseline", "--property-confidence", "--property-seed", "--property-call-timeout",
                   "--property-require"):
        assert option in result.stdout


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_suite_through_the_entry_point_alone(tmp_path, installed, xdist):
    _write(tmp_path, USER_SUITE)
    result = _pytest(tmp_path, *(["-n", "2"] if xdist else []))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "property-report" / "report.json").read_text())["properties"]
    assert [(r["name"], r["status"]) for r in rows] == [("user.rate0", "new"), ("user.rate1", "new")]
    assert "DTD property rates" in result.stdout


def test_entry_point_and_a_conftest_loading_the_plugin_register_each_option_once(tmp_path, installed):
    _write(tmp_path, {**USER_SUITE, "conftest.py": 'pytest_plugins = ["properties.plugin"]\n'})
    (tmp_path / "baseline.json").write_text('{"properties": {}}\n')
    result = _pytest(tmp_path, "--property-baseline", "baseline.json", "--property-report", "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already added" not in result.stderr
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["properties"]) == 2
