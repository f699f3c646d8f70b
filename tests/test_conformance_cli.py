"""``dtd-properties conform`` and ``pytest --dtd-implementation``, end to end, from a user's directory.

In-process (the console's :func:`properties.cli.main`, pytester's in-process
runs) on a small kit run (:data:`SMALL`: the numbers are not what these tests
assert); ``python -m properties.cli`` itself once, in a subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import properties
from properties import conformance
from properties.cli import main

ROOT = Path(properties.__file__).resolve().parent.parent

USER_MODULE = '''
import torch
from torch import nn
from properties import Implementation


def zplus(model, x, output):
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, a = [], x
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                inputs.append(a)
            a = module(a)
        r = torch.zeros_like(a)
        r[:, output] = a[:, output]
        for layer, a in zip(reversed(linears), reversed(inputs)):
            w = layer.weight.clamp(min=0)
            z = a @ w.T
            r = a * ((r / torch.where(z > 0, z, torch.ones_like(z))) @ w)
    return r


def implementations():
    return Implementation("user_zplus", zplus, "z+", stabilizer=0.0)


def not_a_list():
    return {"user_zplus": zplus}


def dotted():
    return Implementation("user.zplus", zplus, "z+")


def leaks_nan(model, x, output):
    r = zplus(model, x, output).clone()
    r[0, 0] = float("nan")  # the first point of every batch
    return r


def nan():
    return Implementation("user_nan", leaks_nan, "z+", stabilizer=0.0)
'''
#: a kit run of this size per population: enough networks that the broken copy below breaks, small enough for seconds
SMALL = dict(networks=3, points=8)


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The user's directory as the current one; the console's sys.path entry and
    the user's modules undone afterwards."""
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(conformance, "run", functools.partial(conformance.run, **SMALL))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name in ("usermod", "brokenmod"):
            del sys.modules[name]


def _cli(capsys, *args):
    """``dtd-properties ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse's usage errors and --version
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("spec, message", [
    ("nosuch:implementations", "cannot import module 'nosuch' of 'nosuch:implementations'"),
    ("usermod:missing", "has no attribute 'missing'; expected a function returning a properties.Implementation"),
    ("usermod:not_a_list",
     "factory usermod:not_a_list returned dict; expected a properties.Implementation or a list of them"),
    ("usermod", "expected MODULE:FACTORY"),
])
def test_a_bad_factory_is_a_usage_error_naming_what_was_given(user_dir, capsys, spec, message):
    code, _, err = _cli(capsys, "conform", spec)
    assert code == 2, err
    assert message in err


def test_a_dotted_name_is_a_usage_error(user_dir, capsys):
    code, _, err = _cli(capsys, "conform", "usermod:dotted")
    assert code == 2
    assert "no dots" in err and "'user.zplus'" in err


def test_no_subcommand_is_a_usage_error(user_dir, capsys):
    assert _cli(capsys)[0] == 2


def test_conform_writes_the_report_and_the_users_own_baseline(user_dir, capsys):
    shipped = (ROOT / "properties" / "baseline.json").read_bytes()
    code, out, err = _cli(capsys, "conform", "usermod:implementations", "--report", "out", "--update-baseline")
    assert code == 0, out + err
    rows = {r["name"]: r for r in json.loads((user_dir / "out" / "report.json").read_text())["properties"]}
    assert rows["conformance.user_zplus.equals_dtd.bias_negative"]["rate"] == 1.0
    assert {r["status"] for r in rows.values()} == {"new"}
    baseline = json.loads((user_dir / "conformance-baseline.json").read_text())["properties"]
    assert set(baseline) == set(rows)
    assert (ROOT / "properties" / "baseline.json").read_bytes() == shipped  # never our baseline
    code, out, err = _cli(capsys, "conform", "usermod:implementations", "--report", "out", "--confidence", "0.95")
    assert code == 0, out + err
    report = json.loads((user_dir / "out" / "report.json").read_text())
    assert {r["status"] for r in report["properties"]} == {"ok"}
    # conform takes --confidence as check does; the report names the user's implementations
    assert report["config"]["confidence"] == 0.95 and {r["confidence"] for r in report["properties"]} == {0.95}
    assert report["config"]["your_implementations"] == ["user_zplus"]
    lines = out.splitlines()
    section = next(i for i, line in enumerate(lines) if "DTD property rates" in line)
    assert lines[section + 1].startswith("Gate: ok")  # the verdict is the summary's first line


def test_version_is_printed(tmp_path):
    from properties.cli import version

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the one subprocess: `python -m properties.cli` works as a program
    result = subprocess.run([sys.executable, "-m", "properties.cli", "--version"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == f"dtd-properties {version()}"


def test_pytest_option_runs_the_kit_and_lists_counterexamples(user_dir, pytester):
    # a broken copy: keeps positive biases in the denominator
    (user_dir / "brokenmod.py").write_text(USER_MODULE.replace("z = a @ w.T", "z = a @ w.T + layer.bias.clamp(min=0)"))
    pytester.chdir()  # pytester's own directory would be the run's; the user's directory is this one
    os.chdir(user_dir)
    sys.path.insert(0, str(user_dir))
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties",
                                          "--dtd-implementation", "brokenmod:implementations", "--property-report",
                                          "rep")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    report = json.loads((user_dir / "rep" / "report.json").read_text())
    row = {r["name"]: r for r in report["properties"]}["conformance.user_zplus.equals_dtd.bias_positive"]
    assert row["rate"] < 1 and "W0 = " in row["example"]
    assert report["config"]["baseline"] == "conformance-baseline.json"
    markdown = (user_dir / "rep" / "report.md").read_text()
    assert "Counterexample of `conformance.user_zplus.equals_dtd.bias_positive`:" in markdown


# ------------------------------------------------------------------- gates on a first run (properties.measure.gates)
def test_a_first_conform_run_fails_when_a_must_hold_property_breaks(user_dir, capsys):
    code, out, err = _cli(capsys, "conform", "usermod:nan", "--report", "out")
    assert code == 1, out + err
    rows = {r["name"]: r for r in json.loads((user_dir / "out" / "report.json").read_text())["properties"]}
    assert rows["conformance.user_nan.finite"]["status"] == "below_floor"
    assert "conformance.user_nan.finite: " in out and "finite must hold in every trial" in out
    assert not (user_dir / "conformance-baseline.json").exists()  # a first run: no baseline was needed to fail


def test_conform_require_fails_below_a_floor_and_passes_at_it(user_dir, capsys):
    code, out, err = _cli(capsys, "conform", "usermod:implementations", "--report", "out",
                          "--require", "conformance.user_*.equals_dtd.*>=1", "--require",
                          "conformance.user_zplus.conservation*>=0.5")
    assert code == 0, out + err
    # the shipped-copy zplus keeps biases out of the denominator: it cannot equal itself with a bias in it
    (user_dir / "brokenmod.py").write_text(USER_MODULE.replace("z = a @ w.T", "z = a @ w.T + layer.bias.clamp(min=0)"))
    code, out, err = _cli(capsys, "conform", "brokenmod:implementations", "--report", "out",
                          "--require", "conformance.user_*.equals_dtd.*>=0.99")
    assert code == 1, out + err
    row = {r["name"]: r for r in json.loads((user_dir / "out" / "report.json").read_text())["properties"]}[
        "conformance.user_zplus.equals_dtd.bias_positive"]
    assert row["status"] == "below_floor" and row["rate"] < 0.99
    assert (
        "conformance.user_zplus.equals_dtd.bias_positive: " in out
        and "below the floor --require 'conformance.user_*.equals_dtd.*>=0.99'" in out
    )


@pytest.mark.parametrize("floor, message", [("conformance.*", "has no '>='"),
                                            ("conformance.*>=95", "a share, not a percentage")])
def test_conform_require_with_bad_syntax_is_a_usage_error(user_dir, capsys, floor, message):
    code, _, err = _cli(capsys, "conform", "usermod:implementations", "--require", floor)
    assert code == 2 and "--require" in err and message in err and "PATTERN>=VALUE" in err
    assert not (user_dir / "property-report").exists()


def test_conform_require_matching_no_rate_is_a_usage_error(user_dir, capsys):
    code, out, err = _cli(capsys, "conform", "usermod:implementations", "--require",
                          "conformance.mylib_*.equals_dtd.*>=0.99")
    assert code == 2, out + err
    assert "'conformance.mylib_*.equals_dtd.*>=0.99'" in out and "matches no rate of this run" in out
    assert "conformance.user_zplus." in out  # some rates that exist


def test_pytest_option_fails_a_first_run_on_a_must_hold_property_and_on_a_floor(user_dir, pytester):
    pytester.chdir()
    os.chdir(user_dir)
    sys.path.insert(0, str(user_dir))
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties",
                                          "--dtd-implementation", "usermod:nan", "--dtd-implementation",
                                          "usermod:implementations",
                                          "--property-require", "conformance.user_zplus.equals_dtd.*>=1",
                                          "--property-report", "rep")
    # no baseline (a first run): the NaN implementation fails on finite alone; the correct one meets its floor
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_conformance?user_nan?*below a required floor*"])
    statuses = {
        r["name"]: r["status"] for r in json.loads((user_dir / "rep" / "report.json").read_text())["properties"]
    }
    assert statuses["conformance.user_nan.finite"] == "below_floor"
    assert {s for name, s in statuses.items() if name.startswith("conformance.user_zplus.")} == {"new"}
