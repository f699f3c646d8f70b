"""The property plugin end to end, in throw-away pytest runs (pytester, in this
process: nothing here needs a fresh one)."""

from __future__ import annotations

import json

import pytest

INNER_TESTS = '''
import os
import pytest
from properties.stats import Rate

pytestmark = pytest.mark.properties

def test_demo(property_report):
    successes = int(os.environ.get("DEMO_SUCCESSES", "50"))
    property_report.rate("demo.rate", Rate(successes, 100, property_report.confidence), "demo: successes of 100 trials",
                         summary=True)
    if os.environ.get("DEMO_PLOTS"):  # rendering PNGs costs seconds a run: only where a test looks at them
        property_report.bars("demo_bars.png", "Demo", ["demo.rate"], ["demo"])
        property_report.histogram("demo_hist.png", "Demo values", {"values": [0.1, 0.2, 0.2, 0.9]})
    if os.environ.get("DEMO_EXTRA"):
        property_report.rate("demo.extra", Rate(1, 2), "demo: recorded only when asked")

@pytest.mark.parametrize("cluster", range(4))
def test_clustered(property_report, cluster):
    rate = Rate.from_clusters([(3, 10), (7 + cluster, 10 + cluster)])
    property_report.rate(f"demo.clustered{cluster}", rate, "demo: clustered")
'''


@pytest.fixture
def inner(pytester, monkeypatch):
    monkeypatch.delenv("DEMO_SUCCESSES", raising=False)
    monkeypatch.delenv("DEMO_PLOTS", raising=False)
    pytester.makepyfile(test_inner=INNER_TESTS)
    (pytester.path / "baseline.json").write_text('{"properties": {}}\n')

    def run(*args, successes=None, extra=False, plots=False):
        if plots:
            monkeypatch.setenv("DEMO_PLOTS", "1")
        else:
            monkeypatch.delenv("DEMO_PLOTS", raising=False)
        if successes is not None:
            monkeypatch.setenv("DEMO_SUCCESSES", str(successes))
        if extra:
            monkeypatch.setenv("DEMO_EXTRA", "1")
        else:
            monkeypatch.delenv("DEMO_EXTRA", raising=False)
        return pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider",
                                             "--property-baseline", "baseline.json", *args)

    return run


def _report(pytester, directory="property-report"):
    return json.loads((pytester.path / directory / "report.json").read_text())


def test_update_baseline_then_pass_then_gate_on_a_changed_rate(pytester, inner):
    first = inner("--update-baseline")
    first.assert_outcomes(passed=5)
    baseline = json.loads((pytester.path / "baseline.json").read_text())["properties"]
    assert baseline["demo.rate"]["rate"] == 0.5 and baseline["demo.rate"]["trials"] == 100
    assert {r["status"] for r in _report(pytester)["properties"]} == {"new"}

    again = inner()
    again.assert_outcomes(passed=5)
    assert {r["status"] for r in _report(pytester)["properties"]} == {"ok"}

    changed = inner(successes=90)
    changed.assert_outcomes(passed=4, failed=1)
    changed.stdout.fnmatch_lines([
        "*1 rate(s) inconsistent with the baseline*",
        "*demo.rate: now 90.00% *, baseline 50.00% * -- the intervals do not overlap*",
        "*rerun with --update-baseline*",
    ])
    row = {r["name"]: r for r in _report(pytester)["properties"]}["demo.rate"]
    assert row["status"] == "regression" and row["baseline"]["rate"] == 0.5

    # a change inside the interval is not a regression
    inner(successes=52).assert_outcomes(passed=5)

    # --update-baseline accepts the change; the next run passes again
    inner("--update-baseline", successes=90).assert_outcomes(passed=5)
    inner(successes=90).assert_outcomes(passed=5)


def test_update_baseline_drops_rates_a_test_no_longer_records(pytester, inner):
    inner("--update-baseline", extra=True).assert_outcomes(passed=5)
    baseline = json.loads((pytester.path / "baseline.json").read_text())["properties"]
    assert baseline["demo.extra"]["test"] == "test_inner.py::test_demo"
    # updating only other tests keeps demo.extra; updating its test drops it
    inner("--update-baseline", "-k", "clustered").assert_outcomes(passed=4)
    assert "demo.extra" in json.loads((pytester.path / "baseline.json").read_text())["properties"]
    result = inner("--update-baseline")
    result.assert_outcomes(passed=5)
    baseline = json.loads((pytester.path / "baseline.json").read_text())["properties"]
    assert "demo.extra" not in baseline and len(baseline) == 5


def test_report_files_appear_and_parse(pytester, inner):
    result = inner("--property-report", "out", plots=True)
    result.assert_outcomes(passed=5)
    report = _report(pytester, "out")
    names = [r["name"] for r in report["properties"]]
    assert names == sorted(names) and "demo.rate" in names
    row = {r["name"]: r for r in report["properties"]}["demo.rate"]
    for key in ("name", "successes", "trials", "rate", "ci_low", "ci_high", "confidence", "baseline", "status"):
        assert key in row
    assert row["status"] == "new" and row["confidence"] == 0.99
    assert {"confidence", "hypothesis_profile", "torch"} <= set(report["config"])
    for png in ("demo_bars.png", "demo_hist.png"):
        assert (pytester.path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (pytester.path / "out" / "report.md").read_text()
    assert "`demo.rate`" in markdown and "demo: successes of 100 trials" in markdown
    result.stdout.fnmatch_lines(["*DTD property rates*", "demo.rate*50.00%*new*"])


def test_xdist_report_equals_serial(pytester, inner):
    inner("--property-report", "serial", plots=True).assert_outcomes(passed=5)
    inner("--property-report", "parallel", "-n", "2", plots=True).assert_outcomes(passed=5)
    serial, parallel = _report(pytester, "serial"), _report(pytester, "parallel")
    assert len(serial["properties"]) == 5
    assert serial["properties"] == parallel["properties"]
    assert serial["plots"] == parallel["plots"]
    assert {"demo_bars.png", "demo_hist.png"} <= {p["file"] for p in serial["plots"]}


def test_no_report_without_records(pytester):
    pytester.makepyfile(test_plain="def test_nothing():\n    assert 1 + 1 == 2\n")
    pytester.runpytest_inprocess("-p", "properties.plugin").assert_outcomes(passed=1)
    assert not (pytester.path / "property-report").exists()


def test_bad_options_are_usage_errors(pytester):
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    (pytester.path / "broken.json").write_text("{not json")
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-baseline", "broken.json")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*baseline broken.json is not valid JSON*"])
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-confidence", "1.5")
    result.stderr.fnmatch_lines(["*--property-confidence must be in (0, 1)*"])
