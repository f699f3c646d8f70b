"""``dtd-properties conform`` and ``pytest --dtd-implementation``, end to end, from a user's directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import properties

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
'''


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    return tmp_path


def _cli(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "properties.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("spec, message", [
    ("nosuch:implementations", "cannot import module 'nosuch' of 'nosuch:implementations'"),
    ("usermod:missing", "has no attribute 'missing'; expected a function returning a properties.Implementation"),
    ("usermod:not_a_list", "factory usermod:not_a_list returned dict; expected a properties.Implementation or a list of them"),
    ("usermod", "expected MODULE:FACTORY"),
])
def test_a_bad_factory_is_a_usage_error_naming_what_was_given(user_dir, spec, message):
    result = _cli(user_dir, "conform", spec)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_dotted_name_is_a_usage_error(user_dir):
    result = _cli(user_dir, "conform", "usermod:dotted")
    assert result.returncode == 2
    assert "no dots" in result.stderr and "'user.zplus'" in result.stderr


def test_no_subcommand_is_a_usage_error(user_dir):
    assert _cli(user_dir).returncode == 2


def test_conform_writes_the_report_and_the_users_own_baseline(user_dir):
    shipped = (ROOT / "properties" / "baseline.json").read_bytes()
    first = _cli(user_dir, "conform", "usermod:implementations", "--report", "out", "--update-baseline")
    assert first.returncode == 0, first.stdout + first.stderr
    rows = {r["name"]: r for r in json.loads((user_dir / "out" / "report.json").read_text())["properties"]}
    assert rows["conformance.user_zplus.equals_dtd.bias_negative"]["rate"] == 1.0
    assert {r["status"] for r in rows.values()} == {"new"}
    baseline = json.loads((user_dir / "conformance-baseline.json").read_text())["properties"]
    assert set(baseline) == set(rows)
    assert (ROOT / "properties" / "baseline.json").read_bytes() == shipped  # never our baseline
    again = _cli(user_dir, "conform", "usermod:implementations", "--report", "out", "--confidence", "0.95")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads((user_dir / "out" / "report.json").read_text())
    assert {r["status"] for r in report["properties"]} == {"ok"}
    # conform takes --confidence as check does; the report names the user's implementations
    assert report["config"]["confidence"] == 0.95 and {r["confidence"] for r in report["properties"]} == {0.95}
    assert report["config"]["your_implementations"] == ["user_zplus"]
    lines = again.stdout.splitlines()
    section = next(i for i, line in enumerate(lines) if "DTD property rates" in line)
    assert lines[section + 1].startswith("Gate: ok")  # the verdict is the summary's first line


def test_version_is_printed(user_dir):
    from properties.cli import version

    result = _cli(user_dir, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dtd-properties {version()}"


def test_pytest_option_runs_the_kit_and_lists_counterexamples(user_dir):
    # a broken copy: keeps positive biases in the denominator
    (user_dir / "brokenmod.py").write_text(USER_MODULE.replace("z = a @ w.T", "z = a @ w.T + layer.bias.clamp(min=0)"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties",
                             "--dtd-implementation", "brokenmod:implementations", "--property-report", "rep"],
                            cwd=user_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((user_dir / "rep" / "report.json").read_text())
    row = {r["name"]: r for r in report["properties"]}["conformance.user_zplus.equals_dtd.bias_positive"]
    assert row["rate"] < 1 and "W0 = " in row["example"]
    assert report["config"]["baseline"] == "conformance-baseline.json"
    markdown = (user_dir / "rep" / "report.md").read_text()
    assert "Counterexample of `conformance.user_zplus.equals_dtd.bias_positive`:" in markdown
